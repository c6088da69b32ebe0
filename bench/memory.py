"""CPU memory of inference and of the two training stages, glae beside PyTorch: each row
runs in a fresh process and reports how far its peak RSS rose, over two calls, above the
process's RSS with the model and the batch built (activations, gradients and work space;
not the weights), and for glae also its activation arena (`arena_bytes`). A benchmark,
not a test: it prints a table.

Rows, for ResNet-18 and ResNet-50 fr+pa (torchvision's plain network for PyTorch, whose
head is not in torchvision) at --size px:
  predict   the batch and its flip as one batch of 2N, eval BN (glae: Model.predict's
            routed answer; torch: the network under no_grad on 2N images)
  stage 2   a step on the frozen backbone (glae: train_step(stage=2); torch: the
            backbone under no_grad, then the head's forward and backward)
  stage 1   a whole training step (forward and backward)

    python bench/memory.py [--batch 16] [--size 224] [--arch 18 50] [--math fp32 bf16]
"""
import argparse
import json
import os
import subprocess
import sys

ROW = r"""
import json, sys
import numpy as np

def rss():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

who, arch, what, math, batch, size = sys.argv[1:7]
batch, size = int(batch), int(size)
rng = np.random.default_rng(0)
n = 2 * batch if what == "predict" else batch
if who == "glae":
    from glae import _C
    m = _C.Model(f"resnet{arch}", "fr+pa", input_size=size, math=math)
    m.copy_head_to_balanced()
    x = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    ages = rng.uniform(1, 90, batch).astype(np.float32)
    run = {"predict": lambda: m.predict(x, norm="glae"),
           "stage2": lambda: m.train_step(x, ages, None, stage=2, loss="lae_cls", mae=4.0, norm="glae"),
           "stage1": lambda: m.train_step(x, ages, None, norm="glae")}[what]
else:
    import torch, torchvision
    torch.set_num_threads(int(sys.argv[7]))
    net = getattr(torchvision.models, f"resnet{arch}")(num_classes=101)
    xt = torch.randn(n, 3, size, size)
    y = torch.randint(0, 101, (n,))
    loss = torch.nn.functional.cross_entropy
    def predict():
        net.eval()
        with torch.no_grad():
            net(xt)
    def stage2():
        net.train()
        with torch.no_grad():
            body = torch.nn.Sequential(*list(net.children())[:-1])
            f = body(xt).flatten(1)
        net.fc.zero_grad()
        loss(net.fc(f), y).backward()
    def stage1():
        net.train()
        net.zero_grad()
        loss(net(xt), y).backward()
    run = {"predict": predict, "stage2": stage2, "stage1": stage1}[what]
# the model and the batch are built: what the calls add is activations and work space
# (glae's arena and scratch stay allocated after the first call; torch's are freed)
base = rss()["VmRSS"]
reset_peak()
run()
run()
peak = rss()["VmHWM"]
arena = m.arena_bytes / 2**20 if who == "glae" else None
print(json.dumps({"rise": peak - base, "arena": arena}))
"""


def row(who, arch, what, math, batch, size, threads, python):
    cmd = [python, "-c", ROW, who, str(arch), what, math, str(batch), str(size), str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        return None, (r.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(r.stdout.strip().splitlines()[-1]), None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--arch", type=int, nargs="+", default=[18, 50], choices=[18, 50])
    ap.add_argument("--math", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                    help="glae's maths (bf16: the CPU's mixed-precision layers)")
    ap.add_argument("--torch-python", default=sys.executable,
                    help="a Python that imports torch and torchvision (default: this one)")
    a = ap.parse_args()
    if not os.path.exists("/proc/self/clear_refs"):
        sys.exit("memory.py: needs Linux's /proc/self/clear_refs to reset the peak RSS")
    import glae

    threads = glae.get_num_threads()
    print(f"glae {glae.__version__}, batch {a.batch} ({2 * a.batch} with the flips for predict), "
          f"{a.size} px, {threads} threads; rise = peak RSS of two calls above the RSS "
          "before them (MiB)")
    cols = [f"glae {m} rise" for m in a.math] + [f"arena {m}" for m in a.math] + ["torch fp32 rise"]
    hdr = f"{'model':<10}{'row':<9}" + "".join(f"{c:>17}" for c in cols)
    print(hdr)
    print("-" * len(hdr))
    for arch in a.arch:
        for what in ("predict", "stage2", "stage1"):
            cells, notes = [], []
            glae_rows = {m: row("glae", arch, what, m, a.batch, a.size, threads, sys.executable)
                         for m in a.math}
            for m in a.math:
                r, err = glae_rows[m]
                cells.append(f"{r['rise']:>17.0f}" if r else f"{'failed':>17}")
                if err:
                    notes.append(f"glae {m}: {err}")
            for m in a.math:
                r, _ = glae_rows[m]
                cells.append(f"{r['arena']:>17.0f}" if r else f"{'-':>17}")
            r, err = row("torch", arch, what, "fp32", a.batch, a.size, threads, a.torch_python)
            cells.append(f"{r['rise']:>17.0f}" if r else f"{'-':>17}")
            if err:
                notes.append(f"torch: {err}")
            print(f"{'R%d fr+pa' % arch:<10}{what:<9}" + "".join(cells)
                  + (f"  ({'; '.join(notes)})" if notes else ""))


if __name__ == "__main__":
    main()
