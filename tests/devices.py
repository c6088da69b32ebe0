"""Which devices the tests can run ops on. Every op binding takes `ctx`: None for the CPU,
or a context from `_C.cuda_context()`; the `dev` fixture (conftest.py) gives each in turn,
so a test written once runs on every backend. Where `nvidia-smi` shows a GPU that glae
cannot use (a CPU-only build, a driver too old for the runtime), the GPU cases fail with
the driver's message instead of skipping."""
import shutil
import subprocess

import pytest

from glae import _C

FP32, TF32, BF16 = 0, 1, 2  # the CUDA math modes (cuda_set_math)


def nvidia_smi_gpus():
    """The GPU lines of `nvidia-smi -L`; [] without nvidia-smi or when it fails."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line for line in out.splitlines() if line.startswith("GPU ")]


STATUS = _C.cuda_device_status()  # never raises; says why there is no device
GPUS_SEEN = nvidia_smi_gpus()     # what the machine has, whatever glae can use
DEVICES = _C.cuda_devices() if STATUS["state"] == "ready" else []
# Skip only where the machine has no GPU. Where nvidia-smi shows one that glae cannot
# use (a CPU-only build, a driver too old for the runtime), the GPU tests fail instead.
needs_gpu = pytest.mark.skipif(not DEVICES and not GPUS_SEEN,
                               reason=f"no CUDA device ({STATUS['message']})")


def unusable_gpu_message():
    return (f"nvidia-smi shows {GPUS_SEEN} but glae cannot use it: {STATUS['state']}: "
            f"{STATUS['message']} (HAS_CUDA={_C.HAS_CUDA}, build: {_C.BUILD_INFO['reason']})")


def is_cuda(ctx):
    """True for a context from cuda_context(), False for None (the CPU reference) or a
    CPU context from cpu_context() (the oneDNN backend)"""
    if ctx is None:
        return False
    try:
        _C.cpu_backend_name(ctx)
        return False
    except TypeError:
        return True
