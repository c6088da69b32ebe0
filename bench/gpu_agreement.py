"""Multi-step agreement (issue 6, item 6): 200 stage-1 steps of the same fr+pa model from
the same start on the GPU and on the CPU, same batches, same OneCycle schedule, fused
Nesterov SGD. Writes the loss curves to a CSV and a PNG and prints the largest gaps.

Training from a random start is chaotic: any difference in rounding grows, so "within
bf16 noise" needs a measured noise. A third run, the control, gives it: the CPU's own
bf16 layers for --math bf16 (the same roundings as the GPU's, in other places), or the
CPU float32 model started from weights moved by 1e-6 relative for fp32/tf32. The GPU's
gap to the CPU float32 curve should be of the size of the control's.

    python bench/gpu_agreement.py [--steps 200] [--backbone resnet18] [--size 112]
                                  [--batch 16] [--math bf16] [--out bench/out]

The CPU side is the slow one (~1-3 s a step for ResNet-18 at 112 px, batch 16)."""
import argparse
import csv
import os
import sys
import time

import numpy as np

from glae import _C


def write_csv(path, curves):
    """step, loss_cpu, loss_gpu, loss_control; written beside and renamed over, never
    half-written"""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss_cpu", "loss_gpu", "loss_control"])
        for s, row in enumerate(zip(curves["cpu"], curves["gpu"], curves["control"])):
            w.writerow([s] + [f"{v:.7g}" for v in row])
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--math", default="bf16", choices=["fp32", "tf32", "bf16"],
                    help="the GPU model's math; the CPU model is float32 (default bf16: the issue's check)")
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join("bench", "out"))
    ap.add_argument("--device", default="cuda",
                    help="the device compared with the CPU ('cpu': a dry run of this script; "
                         "'onednn': the CPU model on the oneDNN backend, --math fp32)")
    a = ap.parse_args()
    if a.device == "onednn":
        if not _C.HAS_ONEDNN or a.math != "fp32":
            sys.exit("gpu_agreement: --device onednn needs a oneDNN build of glae and --math fp32")
    elif a.device != "cpu" and (not _C.HAS_CUDA or not _C.cuda_devices()):
        sys.exit("gpu_agreement: needs a CUDA device and a CUDA build of glae")
    cfg = dict(backbone=a.backbone, head="fr+pa", input_size=a.size, seed=a.seed)
    other = (dict(cpu_backend="onednn") if a.device == "onednn" else
             dict(device=a.device, math=a.math))
    models = {"cpu": _C.Model(**cfg), "gpu": _C.Model(**cfg, **other)}
    if a.math == "bf16":
        models["control"] = _C.Model(**cfg, math="bf16")
        control = "CPU bf16"
    else:
        models["control"] = _C.Model(**cfg)
        p = models["control"].params.astype(np.float64)
        noise = np.random.default_rng(a.seed + 1).standard_normal(p.size)
        models["control"].write_flat("params", (p * (1 + 1e-6 * noise)).astype(np.float32))
        control = "CPU fp32, start moved 1e-6"
    rng = np.random.default_rng(a.seed)
    # a fixed pool of synthetic faces-sized batches: the point is agreement, not accuracy
    pool_x = rng.standard_normal((8, a.batch, a.size, a.size, 3)).astype(np.float32)
    pool_y = rng.uniform(1, 90, (8, a.batch)).astype(np.float32)
    lrs = [_C.onecycle(s, a.steps, a.lr, 0.3, 25.0, 1e4, True, 0.85, 0.95) for s in range(a.steps)]
    curves = {k: [] for k in models}
    os.makedirs(a.out, exist_ok=True)
    tag = "onednn" if a.device == "onednn" else a.math
    stem = os.path.join(a.out, f"gpu_agreement_{a.backbone}_{tag}")
    times = {k: 0.0 for k in models}
    for step in range(a.steps):
        x, y = pool_x[step % 8], pool_y[step % 8]
        lr, mom = lrs[step]
        for k, m in models.items():
            t = time.perf_counter()
            m.zero_grad()
            loss = m.train_step(x, y, stage=1, loss="base")["total"]
            m.sgd_step(lr, mom, 0.0, 5e-4, True, step == 0, 0, m.group_range("head")[1], False)
            times[k] += time.perf_counter() - t
            curves[k].append(loss)
        if step % 20 == 0 or step == a.steps - 1:
            print(f"step {step:4d}  cpu {curves['cpu'][-1]:.5f}  gpu {curves['gpu'][-1]:.5f}  "
                  f"control {curves['control'][-1]:.5f}", flush=True)
            # so far, so a run stopped by a time limit still leaves its curves
            write_csv(stem + ".csv", curves)
    c, g, k = (np.array(curves[n]) for n in ("cpu", "gpu", "control"))
    rel = np.abs(c - g) / np.maximum(np.abs(c), 1e-12)
    relk = np.abs(c - k) / np.maximum(np.abs(c), 1e-12)
    print(f"control: {control}; largest relative gap to the CPU float32 curve: GPU "
          f"{rel.max():.3g} (step {rel.argmax()}), control {relk.max():.3g} (step "
          f"{relk.argmax()}); mean over the last 50 steps: GPU {rel[-50:].mean():.3g}, control "
          f"{relk[-50:].mean():.3g}; final cpu {c[-1]:.5f} gpu {g[-1]:.5f} control "
          f"{k[-1]:.5f}; time per step cpu {times['cpu'] / a.steps:.3f} s, gpu "
          f"{times['gpu'] / a.steps:.4f} s")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        ax[0].plot(c, label="CPU float32")
        ax[0].plot(g, label=f"GPU ({a.math})", linestyle="--")
        ax[0].plot(k, label=f"control ({control})", linestyle=":")
        ax[0].set_ylabel("stage-1 loss")
        ax[0].legend()
        ax[1].semilogy(rel + 1e-12, label="GPU")
        ax[1].semilogy(relk + 1e-12, label="control", linestyle=":")
        ax[1].set_ylabel("|run - CPU float32| / CPU float32")
        ax[1].legend()
        ax[1].set_xlabel("step")
        fig.suptitle(f"{a.backbone} fr+pa, {a.size} px, batch {a.batch}")
        fig.tight_layout()
        fig.savefig(stem + ".png", dpi=120)
        print("wrote", stem + ".csv", stem + ".png")
    except ImportError:
        print("wrote", stem + ".csv", "(matplotlib missing: no PNG)")


if __name__ == "__main__":
    main()
