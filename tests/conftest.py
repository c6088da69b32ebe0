import os
import sys

import numpy as np
import pytest

import glae
from glae import _C

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
UTKFACE_DEV = os.path.join(SHARED, "data", "utkface-dev", "images")
MTCNN_WEIGHTS = os.path.join(SHARED, "weights", "mtcnn")


@pytest.fixture(autouse=True)
def poison_outputs():
    """Every output array a binding allocates starts as NaN (floats) or 0xA5 bytes, so an
    element a kernel forgets to write fails the comparison."""
    _C.set_poison(True)
    yield
    _C.set_poison(False)


@pytest.fixture(scope="session")
def gpu_ctx():
    """a CUDA context on the first GPU (skips without one, fails on an unusable one)"""
    from devices import DEVICES, FP32, GPUS_SEEN, STATUS, unusable_gpu_message

    if not DEVICES:
        if GPUS_SEEN:
            pytest.fail(unusable_gpu_message())
        pytest.skip(f"no CUDA device ({STATUS['message']})")
    c = _C.cuda_context(0, FP32)
    yield c
    _C.cuda_set_math(c, FP32)


@pytest.fixture(scope="session")
def onednn_ctx():
    """a CPU context with the oneDNN backend (skips where glae was built without oneDNN),
    every conv shape through oneDNN (GLAE_ONEDNN_CONV=all) rather than only those where
    it measured faster, so the parity tests reach every primitive"""
    if not _C.HAS_ONEDNN:
        pytest.skip(f"glae built without oneDNN ({_C.BUILD_INFO.get('onednn_reason', '')})")
    old = os.environ.get("GLAE_ONEDNN_CONV")
    os.environ["GLAE_ONEDNN_CONV"] = "all"
    try:
        return _C.cpu_context("onednn")
    finally:
        if old is None:
            del os.environ["GLAE_ONEDNN_CONV"]
        else:
            os.environ["GLAE_ONEDNN_CONV"] = old


@pytest.fixture(params=["cpu", "onednn", "cuda"])
def dev(request):
    """the `ctx` argument of each backend in turn: None for the CPU reference, a CPU
    context with the oneDNN backend, then a CUDA context in fp32 math; a test that takes it
    runs its op on every backend"""
    if request.param == "cpu":
        return None
    if request.param == "onednn":
        return request.getfixturevalue("onednn_ctx")
    c = request.getfixturevalue("gpu_ctx")
    _C.cuda_set_math(c, 0)
    return c


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def requires_utkface():
    return pytest.mark.skipif(not os.path.isdir(UTKFACE_DEV), reason="../shared/data/utkface-dev absent")
