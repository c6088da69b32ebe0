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


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def requires_utkface():
    return pytest.mark.skipif(not os.path.isdir(UTKFACE_DEV), reason="../shared/data/utkface-dev absent")
