"""CPU inference: glae's engine (reference kernels and the oneDNN backend) against ONNX
Runtime running the very model glae exports and against PyTorch, same weights, same
normalised inputs. Batch 1 (a web service, a camera loop) and batch 32, 112 and 224 px,
1 and 2 threads. A benchmark, not a test: it prints a table.

Two models, both ResNet-18 from the same seed:
  gap   : the plain classifier (GAP head), vanilla head, no flip; PyTorch runs it as
          torchvision's resnet18 with glae's weights (eval mode, no_grad)
  fr+pa : the GLAE model as Model.predict runs it by default (the image and its flip
          through both heads, Adaptive Routing); not in torchvision, so no PyTorch column
Each (model, size, batch, threads) runs every engine once per repeat, interleaved, and
reports the median; "diff" is the largest |prob - glae reference prob| of each engine.

    PYTHONPATH=. python bench/cpu_infer.py [--repeats 5] [--sizes 112,224] [--batches 1,32]
                                           [--threads 1,2] [--models gap,fr+pa]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import glae  # noqa: E402
from glae import _C  # noqa: E402


def cpu_line():
    name, flags = "?", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name == "?":
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    want = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
    return f"{name}; {os.cpu_count()} CPUs; flags: {' '.join(f for f in want if f in flags) or 'none of ' + ' '.join(want)}"


def engines_for(model, size, batch, threads, have):
    """{name: (call(x) -> prob, setup(threads))} for one model and size."""
    out = {}
    cores = {b: _C.Model("resnet18", model, input_size=size, seed=0, cpu_backend=b)
             for b in (["reference", "onednn"] if _C.HAS_ONEDNN else ["reference"])}
    route, flip = ("vanilla", False) if model == "gap" else ("smaller", True)
    for b, core in cores.items():
        def call(x, core=core):
            return core.predict(x, route=route, flip=flip)[1]

        def setup(n, core=core):
            core.threads = n
        out[f"glae {b}"] = (call, setup)
    ref = cores["reference"]
    if "ort" in have:
        import onnxruntime as ort
        from glae.export import export_onnx

        path = os.path.join(tempfile.mkdtemp(), f"{model}_{size}.onnx")
        export_onnx(ref, path, head="vanilla" if model == "gap" else "routed", flip=flip,
                    layout="nhwc")
        sessions = {}
        for n in threads:
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = n, 1
            sessions[n] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        cur = {"n": threads[0]}

        def call(x):
            return sessions[cur["n"]].run(["prob"], {"image": x})[0]

        def setup(n):
            cur["n"] = n
        out["onnxruntime"] = (call, setup)
    if "torch" in have and model == "gap":
        import torch
        import torchvision

        net = torchvision.models.resnet18(num_classes=ref.config["num_classes"])
        sd = {}
        for k, shape, *_ in ref.param_table():
            if not k.startswith("balanced."):
                sd[k] = torch.from_numpy(np.ascontiguousarray(ref.get(k)))
        net.load_state_dict(sd, strict=False)
        net.eval()

        def call(x):
            with torch.no_grad():
                t = torch.from_numpy(x).permute(0, 3, 1, 2)  # NHWC memory: channels_last
                return torch.softmax(net(t), 1).numpy()

        def setup(n):
            torch.set_num_threads(n)
        out["pytorch"] = (call, setup)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", default="112,224")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--models", default="gap,fr+pa")
    a = ap.parse_args()
    have = set()
    try:
        import onnxruntime  # noqa: F401
        have.add("ort")
    except ImportError:
        pass
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
        have.add("torch")
    except ImportError:
        pass
    threads = [int(t) for t in a.threads.split(",")]
    print(f"CPU: {cpu_line()}")
    print(f"glae {glae.__version__} (oneDNN backend: {'built, ' + _C.BUILD_INFO.get('onednn_version', '') if _C.HAS_ONEDNN else 'not built'})"
          + (f", onnxruntime {__import__('onnxruntime').__version__}" if "ort" in have else ", no onnxruntime")
          + (f", torch {__import__('torch').__version__}" if "torch" in have else ", no torch"))
    print(f"load average at start {os.getloadavg()[0]:.2f}; medians of {a.repeats} interleaved "
          "repeats after one warm-up call each; ms per call, images/s; ratio = engine's "
          "speed / ONNX Runtime's")
    print(f"{'model':6} {'px':>4} {'batch':>5} {'thr':>3} {'engine':16} {'ms':>9} {'img/s':>8} "
          f"{'x ORT':>6} {'max diff':>9}")
    rng = np.random.default_rng(0)
    for model in a.models.split(","):
        for size in [int(s) for s in a.sizes.split(",")]:
            for batch in [int(b) for b in a.batches.split(",")]:
                x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
                eng = engines_for(model, size, batch, threads, have)
                for n in threads:
                    probs, times = {}, {k: [] for k in eng}
                    for k, (call, setup) in eng.items():
                        setup(n)
                        probs[k] = np.asarray(call(x))  # warm-up: plans, primitives
                    for _ in range(a.repeats):
                        for k, (call, setup) in eng.items():
                            setup(n)
                            t = time.perf_counter()
                            call(x)
                            times[k].append(time.perf_counter() - t)
                    med = {k: float(np.median(v)) for k, v in times.items()}
                    ref = probs["glae reference"]
                    for k in eng:
                        ratio = med["onnxruntime"] / med[k] if "onnxruntime" in med else float("nan")
                        diff = float(np.abs(probs[k] - ref).max())
                        print(f"{model:6} {size:4d} {batch:5d} {n:3d} {k:16} {med[k] * 1e3:9.1f} "
                              f"{batch / med[k]:8.1f} {ratio:6.2f} {diff:9.2e}", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
