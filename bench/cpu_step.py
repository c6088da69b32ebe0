"""CPU throughput of a ResNet-18 training step (forward + backward + SGD over the flat
buffer) and of inference, batch 16, at 112 and 224 px, heads "gap" and "fr+pa"; peak
activation arena and peak RSS of each row. In the same run: the sgemm reference rate and the
ResNet-18 conv layers' achieved GFLOP/s at the same batch and size (bench/conv.py's
machinery, imported), and the conv FLOPs of one step divided by the step's time. With
PyTorch importable, the same model in PyTorch and the ratio. Then the EfficientNetV2
backbones (--effnet, head "gap"), train and infer at --effnet-sizes, each with torchvision's
efficientnet_v2_* (num_classes=101: its pool + dropout + linear against glae's gap head)
timed in the same run. A benchmark, not a test: it prints tables.

    python bench/cpu_step.py --skip-resnet --effnet efficientnet_v2_s,efficientnet_v2_m
    python bench/cpu_step.py [--iters 2] [--batch 16] [--conv-reps 2] [--cpu-backend onednn]

--cpu-backend picks glae's CPU op table (reference kernels or oneDNN; the conv GF/s columns
always measure the reference conv kernels).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import glae  # noqa: E402
from glae import _C  # noqa: E402

import conv as conv_bench  # noqa: E402  (bench/conv.py: sgemm reference, conv rates)


def rss_mib():
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


def reset_peak_rss():
    """Restart the kernel's peak-RSS counter (VmHWM) so each row reports its own peak;
    False where /proc/self/clear_refs cannot be written (then peaks are cumulative)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed(fn, iters):
    fn()  # warm-up: plans the arena
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def bench_glae(head, size, batch, iters, backbone="resnet18", cpu_backend="reference"):
    m = _C.Model(backbone, head, input_size=size, cpu_backend=cpu_backend)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    ages = rng.uniform(1, 90, batch).astype(np.float32)
    p, g, mom = m.params, m.grads, m.momentum
    has_sgd = hasattr(_C, "sgd_step")

    def step():
        m.zero_grad()
        m.train_step(x, ages)
        if has_sgd:
            _C.sgd_step(p, mom, g, 0.01)
        else:
            np.subtract(p, 0.01 * g, out=p)

    t_train = timed(step, iters)
    # inference: one forward pass of the batch (eval BN), the vanilla head, no flip
    t_inf = timed(lambda: m.predict(x, route="vanilla", flip=False), iters)
    peak = rss_mib()[1]  # while the model is alive
    return t_train, batch / t_inf, m.arena_bytes / 2**20, peak, has_sgd


def bench_torch(arch, size, batch, iters):
    """torchvision's `arch` with num_classes=101 (train mode: for EfficientNetV2 its
    stochastic depth and dropout on), SGD with momentum, cross-entropy over 101 classes;
    inference in eval mode. (train, infer) images/s."""
    import torch
    import torchvision

    net = getattr(torchvision.models, arch)(num_classes=101)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 101, (batch,))

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    net.train()
    t_train = timed(step, iters)
    net.eval()
    with torch.no_grad():
        t_inf = timed(lambda: net(x), iters)
    return batch / t_train, batch / t_inf


def effnet_rows(archs, sizes, batch, iters, have_torch):
    print(f"\nEfficientNetV2, head gap, batch {batch}: glae then torchvision in the same run, "
          "interleaved row by row")
    hdr = f"{'backbone':18} {'px':>4} {'train img/s':>12} {'infer img/s':>12} {'arena MiB':>10}"
    if have_torch:
        hdr += f" {'torch train':>11} {'torch inf':>10} {'ratio tr':>8} {'ratio inf':>9}"
    print(hdr)
    for arch in archs:
        for size in sizes:
            t_train, inf, arena, _, _ = bench_glae("gap", size, batch, iters, backbone=arch)
            tr = batch / t_train
            line = f"{arch:18} {size:4d} {tr:12.2f} {inf:12.2f} {arena:10.1f}"
            if have_torch:
                ttr, tinf = bench_torch(arch, size, batch, iters)
                line += f" {ttr:11.2f} {tinf:10.2f} {tr / ttr:8.2f} {inf / tinf:9.2f}"
            print(line, flush=True)


def paired(sizes, batch, repeats):
    """Training steps of the GAP model, interleaved: glae reference, glae oneDNN and (where
    importable) PyTorch take turns, one step each per repeat; medians. On a shared machine
    a neighbour's load then falls on every engine alike."""
    rng = np.random.default_rng(0)
    print(f"paired training steps, ResNet-18 gap, batch {batch}: median s of {repeats} "
          "interleaved steps after one warm-up each; img/s; ratio to PyTorch")
    for size in sizes:
        x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
        ages = rng.uniform(1, 90, batch).astype(np.float32)
        steps = {}
        for b in ["reference"] + (["onednn"] if _C.HAS_ONEDNN else []):
            m = _C.Model("resnet18", "gap", input_size=size, cpu_backend=b)

            def step(m=m):
                m.zero_grad()
                m.train_step(x, ages)
                m.sgd_step(0.01, 0.9, 0.0, 5e-4, True, False, 0, m.params.size, False)
            steps[f"glae {b}"] = step
        try:
            import torch
            import torchvision

            net = torchvision.models.resnet18(num_classes=101)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                  weight_decay=5e-4)
            xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
            yt = torch.randint(0, 101, (batch,))
            net.train()

            def tstep():
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(xt), yt).backward()
                opt.step()
            steps["pytorch"] = tstep
        except ImportError:
            pass
        times = {k: [] for k in steps}
        for fn in steps.values():
            fn()
        for _ in range(repeats):
            for k, fn in steps.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        med = {k: float(np.median(v)) for k, v in times.items()}
        for k in steps:
            ratio = med["pytorch"] / med[k] if "pytorch" in med else float("nan")
            print(f"{size:4d} px {k:16} {med[k]:7.3f} s {batch / med[k]:7.2f} img/s "
                  f"x PyTorch {ratio:5.2f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sizes", default="112,224")
    ap.add_argument("--conv-reps", type=int, default=2, help="best of N for each conv shape")
    ap.add_argument("--threads", type=int, default=0, help="0: the library's default")
    ap.add_argument("--effnet", default="efficientnet_v2_s,efficientnet_v2_m",
                    help="EfficientNetV2 backbones to time after the ResNet-18 table ('' for none)")
    ap.add_argument("--effnet-sizes", default="112,224")
    ap.add_argument("--skip-resnet", action="store_true", help="only the EfficientNetV2 rows")
    ap.add_argument("--cpu-backend", default="reference", choices=["reference", "onednn"])
    ap.add_argument("--paired", type=int, default=0, metavar="REPEATS",
                    help="only the interleaved glae reference / oneDNN / PyTorch steps")
    args = ap.parse_args()
    if args.threads > 0:
        glae.set_num_threads(args.threads)
    if args.paired:
        try:
            import torch
            torch.set_num_threads(glae.get_num_threads())
        except ImportError:
            pass
        print(f"load average at start {os.getloadavg()[0]:.2f}, {glae.get_num_threads()} threads")
        paired([int(s) for s in args.sizes.split(",")], args.batch, args.paired)
        print(f"load average at end {os.getloadavg()[0]:.2f}")
        return
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
        have_torch = True
        torch.set_num_threads(glae.get_num_threads())
    except ImportError:
        have_torch = False
    rng = np.random.default_rng(0)
    t_start, load0 = time.perf_counter(), os.getloadavg()[0]
    per_row_peak = reset_peak_rss()
    print(f"glae {glae.__version__}, CPU backend {args.cpu_backend}, {glae.get_num_threads()} threads, batch {args.batch}, "
          f"{args.iters} timed iterations after one warm-up; load average at start {load0:.2f}")
    print("sgemm GF/s: the best of glae's _C.sgemm on M x 1152 x 128 and 2048^3, measured "
          "just before the convs of each size (a busy machine moves both together); conv "
          "GF/s: ResNet-18's conv shapes through conv2d forward + backward at this batch and "
          f"size, weighted by count (best of {args.conv_reps}); ratio = conv / sgemm; step "
          "conv GF/s = conv FLOPs of one training step / step time")
    print("peak RSS: " + ("of the row (VmHWM reset before it)" if per_row_peak else
                          "of the process so far (VmHWM could not be reset)"))
    if not have_torch:
        print("torch/torchvision not importable: PyTorch comparison skipped")
    hdr = (f"{'head':6} {'px':>4} {'train img/s':>12} {'infer img/s':>12} {'sgemm GF/s':>10} "
           f"{'conv GF/s':>9} {'ratio':>6} {'step conv GF/s':>14} {'arena MiB':>10} "
           f"{'peak RSS MiB':>12}")
    if have_torch:
        hdr += f" {'torch train':>11} {'torch inf':>10} {'ratio tr':>8} {'ratio inf':>9}"
    print(hdr)
    for size in [] if args.skip_resnet else [int(s) for s in args.sizes.split(",")]:
        steps = []
        for head in ("gap", "fr+pa"):
            reset_peak_rss()
            steps.append((head, bench_glae(head, size, args.batch, args.iters,
                                                  cpu_backend=args.cpu_backend)))
        # the conv kernels at the same batch and size, after the steps (their arrays would
        # otherwise count towards the steps' peak)
        sgemm = max(conv_bench.sgemm_reference(rng).values())
        _, tot = conv_bench.conv_rates([size], args.batch, args.conv_reps, rng)
        ff, tf, fb, tb = tot[size]
        conv_rate = (ff + fb) / (tf + tb) / 1e9
        for head, (t_train, inf, arena, peak, has_sgd) in steps:
            tr = args.batch / t_train
            line = (f"{head:6} {size:4d} {tr:12.2f} {inf:12.2f} {sgemm:10.1f} {conv_rate:9.1f} "
                    f"{conv_rate / sgemm:6.2f} {(ff + fb) / t_train / 1e9:14.1f} {arena:10.1f} "
                    f"{peak:12.0f}")
            if have_torch and head == "gap":  # the GLAE head is not in torchvision
                ttr, tinf = bench_torch("resnet18", size, args.batch, args.iters)
                line += f" {ttr:11.2f} {tinf:10.2f} {tr / ttr:8.2f} {inf / tinf:9.2f}"
            print(line, flush=True)
    if args.effnet:
        effnet_rows(args.effnet.split(","), [int(s) for s in args.effnet_sizes.split(",")],
                    args.batch, args.iters, have_torch)
    print(f"optimiser: {'_C.sgd_step' if hasattr(_C, 'sgd_step') else 'NumPy p -= lr * g'}; "
          f"load average at end {os.getloadavg()[0]:.2f}; wall {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
