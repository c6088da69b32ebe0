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


@pytest.fixture(params=["cpu", "cuda"])
def dev(request):
    """the `ctx` argument of each backend in turn: None for the CPU, then a CUDA context in
    fp32 math; a test that takes it runs its op on every device"""
    if request.param == "cpu":
        return None
    c = request.getfixturevalue("gpu_ctx")
    _C.cuda_set_math(c, 0)
    return c


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def requires_utkface():
    return pytest.mark.skipif(not os.path.isdir(UTKFACE_DEV), reason="../shared/data/utkface-dev absent")
