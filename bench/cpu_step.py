"""CPU throughput of a ResNet-18 training step (forward + backward + SGD over the flat
buffer) and of inference, batch 16, at 112 and 224 px, heads "gap" and "fr+pa"; peak
activation arena and process RSS. With PyTorch importable, the same model in PyTorch in
the same run and the ratio. A benchmark, not a test: it prints a table.

    python bench/cpu_step.py [--iters 2] [--batch 16]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import glae  # noqa: E402
from glae import _C  # noqa: E402


def rss_mib():
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


def timed(fn, iters):
    fn()  # warm-up: plans the arena
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def bench_glae(head, size, batch, iters):
    m = _C.Model("resnet18", head, input_size=size)
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
    rss = rss_mib()[0]  # while the model is alive
    return batch / t_train, batch / t_inf, m.arena_bytes / 2**20, rss, has_sgd


def bench_torch(head, size, batch, iters):
    import torch
    import torchvision

    net = torchvision.models.resnet18(num_classes=101)
    if head != "gap":
        return None, None  # the GLAE head is not in torchvision: compare the GAP model only
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sizes", default="112,224")
    ap.add_argument("--threads", type=int, default=0, help="0: the library's default")
    args = ap.parse_args()
    if args.threads > 0:
        glae.set_num_threads(args.threads)
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
        have_torch = True
        torch.set_num_threads(glae.get_num_threads())
    except ImportError:
        have_torch = False
    print(f"glae {glae.__version__}, {glae.get_num_threads()} threads, batch {args.batch}, "
          f"{args.iters} timed iterations after one warm-up")
    if not have_torch:
        print("torch/torchvision not importable: PyTorch comparison skipped")
    hdr = f"{'head':6} {'px':>4} {'train img/s':>12} {'infer img/s':>12} {'arena MiB':>10} {'RSS MiB':>8}"
    if have_torch:
        hdr += f" {'torch train':>11} {'torch inf':>10} {'ratio tr':>8} {'ratio inf':>9}"
    print(hdr)
    for size in [int(s) for s in args.sizes.split(",")]:
        for head in ("gap", "fr+pa"):
            tr, inf, arena, rss, has_sgd = bench_glae(head, size, args.batch, args.iters)
            line = f"{head:6} {size:4d} {tr:12.2f} {inf:12.2f} {arena:10.1f} {rss:8.0f}"
            if have_torch:
                ttr, tinf = bench_torch(head, size, args.batch, args.iters)
                if ttr:
                    line += f" {ttr:11.2f} {tinf:10.2f} {tr / ttr:8.2f} {inf / tinf:9.2f}"
            print(line, flush=True)
    print(f"optimiser: {'_C.sgd_step' if has_sgd else 'NumPy p -= lr * g'}; peak RSS "
          f"{rss_mib()[1]:.0f} MiB")


if __name__ == "__main__":
    main()
