"""What this glae was built with and which devices it can use (`python -m glae info`), and
a self-check of each usable GPU against the CPU (`--check`): the same small training step
from the same weights, whose loss and gradient must agree to the precision's noise. The
CPU engine is the definition of right; docs/cuda.md has the full parity tests."""
from __future__ import annotations

import platform
import time

import numpy as np

from ._lib import _C

# a small ResNet-18 fr+pa: every kind of layer, a second or two on a CPU
CHECK_MODEL = dict(backbone="resnet18", head="fr+pa", input_size=64, proj_depth=1,
                   proj_width=32, seed=0)
CHECK_BATCH = 8


def build_info():
    """{version, python, numpy, threads, build (_C.BUILD_INFO), cuda (the device probe),
    devices [(name, major, minor)]}. Never raises: a broken driver is reported in cuda."""
    from . import __version__

    cuda = _C.cuda_device_status()
    try:
        devices = list(_C.cuda_devices()) if _C.HAS_CUDA else []
    except RuntimeError:  # a driver that fails after the probe: cuda["message"] says why
        devices = []
    return {"version": __version__, "python": platform.python_version(),
            "numpy": np.__version__, "threads": _C.get_num_threads(),
            "build": dict(_C.BUILD_INFO), "cuda": cuda, "devices": devices}


def usable_gpus(info=None):
    """["cuda:0", ...]: the GPUs glae can use, from build_info() (computed when None)."""
    info = build_info() if info is None else info
    return [f"cuda:{i}" for i in range(len(info["devices"]))]


def format_info(info):
    b, c = info["build"], info["cuda"]
    lines = [f"glae {info['version']}  Python {info['python']}  NumPy {info['numpy']}  "
             f"CPU threads {info['threads']}"]
    if b.get("cuda") == "1":
        lines.append(f"CUDA backend: built (nvcc {b.get('nvcc_version', '?')}, "
                     f"{b.get('cuda_arch', '?')}, cuDNN headers {b.get('cudnn_header_version', '?')})")
    else:
        lines.append(f"CUDA backend: not built ({b.get('reason', 'unknown reason')})")
    lines.append(f"CUDA devices: {c['state']}" + (f" ({c['message']})" if c.get("message") else ""))
    for i, (name, major, minor) in enumerate(info["devices"]):
        lines.append(f"  cuda:{i}  {name}  sm_{major}{minor}")
    return "\n".join(lines)


def _batch(seed):
    rng = np.random.default_rng(seed)
    size = CHECK_MODEL["input_size"]
    x = rng.integers(0, 256, (CHECK_BATCH, size, size, 3), dtype=np.uint8)
    ages = rng.uniform(5, 80, CHECK_BATCH).astype(np.float32)
    return x, ages


def _step(m, x, ages):
    m.zero_grad()
    t = time.perf_counter()
    loss = m.train_step(x, ages, None, norm="glae")["total"]
    return loss, m.grads.astype(np.float64), time.perf_counter() - t


def _rel(a, b):
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))


def self_check(devices=None, maths=("fp32", "bf16"), warm_steps=8):
    """One training step of CHECK_MODEL on each device in each math, against the CPU from
    the same weights (after warm_steps float32 SGD steps on the CPU: at random
    initialisation a ResNet's gradient is chaotic and bf16 could only be judged loosely).

    fp32 must match the CPU's float32 step (loss to 1e-3, gradient to 2e-2 relative: cuDNN
    sums in other orders); bf16 must be no further from the float32 gradient than twice
    the CPU's own bf16 layers are, plus 0.05, with the loss within 2e-2 of theirs.
    devices: e.g. ["cuda:0"] (default: every usable GPU; "cpu" checks the CPU engine
    against itself, which only exercises the check). Returns the reference row, then one
    dict per (device, math): device, math, loss, loss_rel, grad_rel (to the CPU float32
    gradient), limit, ok, step_s (the checked step, first-call costs included), error
    (when it failed), reference (the first row only)."""
    devices = usable_gpus() if devices is None else devices
    x, ages = _batch(1)
    cpu32 = _C.Model(**CHECK_MODEL)
    wx, wa = _batch(2)
    for i in range(warm_steps):
        cpu32.zero_grad()
        cpu32.train_step(wx, wa, None, norm="glae")
        cpu32.sgd_step(0.002, 0.9, 0.0, 5e-4, True, i == 0)
    params, buffers = cpu32.params.copy(), cpu32.buffers.copy()

    def like_cpu32(**kw):
        m = _C.Model(**CHECK_MODEL, **kw)
        m.write_flat("params", params)
        m.write_flat("buffers", buffers)
        return m

    # the references take their step from the same state as the devices
    loss32, g32, t_cpu = _step(like_cpu32(), x, ages)
    rows = [{"device": "cpu", "math": "fp32", "loss": loss32, "loss_rel": 0.0, "grad_rel": 0.0,
             "limit": 0.0, "ok": True, "step_s": t_cpu, "error": None, "reference": True}]
    # the CPU's bf16 layers: what a GPU's bf16 step is measured against
    ref16 = _step(like_cpu32(math="bf16"), x, ages) if "bf16" in maths else None
    for dev in devices:
        for math in maths:
            row = {"device": dev, "math": math, "loss": float("nan"), "loss_rel": float("nan"),
                   "grad_rel": float("nan"), "limit": float("nan"), "ok": False,
                   "step_s": float("nan"), "error": None, "reference": False}
            rows.append(row)
            try:
                loss, g, row["step_s"] = _step(like_cpu32(device=dev, math=math), x, ages)
            except (RuntimeError, ValueError, MemoryError) as e:
                row["error"] = f"{type(e).__name__}: {e}"
                continue
            row["loss"], row["grad_rel"] = loss, _rel(g, g32)
            if math == "bf16":
                row["loss_rel"] = abs(loss - ref16[0]) / abs(ref16[0])
                row["limit"] = 2 * _rel(ref16[1], g32) + 0.05
                row["ok"] = row["loss_rel"] < 2e-2 and row["grad_rel"] <= row["limit"]
            else:
                row["loss_rel"] = abs(loss - loss32) / abs(loss32)
                row["limit"] = 2e-2 if math == "fp32" else 1e-1  # tf32: 10-bit mantissa
                row["ok"] = row["loss_rel"] < 1e-3 * (1 if math == "fp32" else 20) \
                    and row["grad_rel"] <= row["limit"]
    return rows


def format_check(rows):
    head = f"{'device':<9}{'math':<6}{'loss':>10}{'loss rel':>10}{'grad rel':>10}{'limit':>8}" \
           f"{'step':>9}  result"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["error"]:
            lines.append(f"{r['device']:<9}{r['math']:<6}  failed: {r['error']}")
            continue
        verdict = "reference" if r["reference"] else ("ok" if r["ok"] else "MISMATCH")
        lines.append(f"{r['device']:<9}{r['math']:<6}{r['loss']:>10.4f}{r['loss_rel']:>10.1e}"
                     f"{r['grad_rel']:>10.1e}{r['limit']:>8.2f}{r['step_s'] * 1e3:>7.0f}ms  "
                     f"{verdict}")
    return "\n".join(lines)
