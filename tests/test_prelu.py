"""PReLU (PyTorch semantics, one slope per channel on the last axis) against NumPy,
finite differences, bad input."""
import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak, assert_unmodified, numeric_grad

SHAPES = [(7, 1), (2, 5, 5, 10), (1, 12, 12, 28), (300, 3), (5,), (3, 0)]


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_numpy(shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[: x.size // 5] = 0.0  # exact zeros take the slope side (PyTorch)
    c = shape[-1]
    w = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    y = assert_unmodified(_C.prelu_forward, x, w)
    np.testing.assert_array_equal(y, np.where(x > 0, x, w * x))
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dw = assert_unmodified(_C.prelu_backward, dy, x, w)
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, w * dy))
    x64, d64 = x.astype(np.float64), dy.astype(np.float64)
    ref_dw = np.where(x64 > 0, 0.0, x64 * d64).reshape(int(np.prod(shape[:-1])), c).sum(0)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-5)


def test_shared_slope_as_one_channel(rng):
    # nn.PReLU() (one slope for every channel) is the same kernel with C = 1
    x = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    w = np.array([0.25], np.float32)
    y = _C.prelu_forward(x.reshape(-1, 1), w).reshape(x.shape)
    np.testing.assert_array_equal(y, np.where(x > 0, x, 0.25 * x))


def test_finite_differences(rng):
    # keep x away from the kink at 0
    x = (rng.uniform(0.1, 1.0, (2, 3, 3, 4)) * rng.choice([-1, 1], (2, 3, 3, 4))).astype(np.float32)
    w = rng.uniform(0.0, 0.5, 4).astype(np.float32)
    g = rng.standard_normal(x.shape)
    loss = lambda: np.sum(g * _C.prelu_forward(x, w).astype(np.float64))
    dx, dw = _C.prelu_backward(g.astype(np.float32), x, w)
    np.testing.assert_allclose(dx, numeric_grad(loss, x, eps=1e-2), atol=1e-3)
    np.testing.assert_allclose(dw, numeric_grad(loss, w, eps=1e-2), atol=1e-3)


def test_thread_count_does_not_change_dweight(rng):
    x = rng.standard_normal((64, 32, 32)).astype(np.float32)
    w = rng.uniform(0, 0.5, 32).astype(np.float32)
    nt = _C.get_num_threads()
    try:
        res = []
        for t in (1, 2):
            _C.set_num_threads(t)
            res.append(_C.prelu_backward(x, x, w))
    finally:
        _C.set_num_threads(nt)
    np.testing.assert_array_equal(res[0][1], res[1][1])
    np.testing.assert_array_equal(res[0][0], res[1][0])


def test_no_reference_leaks(rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    w = np.ones(3, np.float32)
    assert_no_leak(_C.prelu_forward, x, w)
    assert_no_leak(_C.prelu_backward, x, x, w)


def test_bad_input():
    x = np.zeros((2, 3), np.float32)
    w = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _C.prelu_forward(x.astype(np.float64), w)
    with pytest.raises(TypeError, match="weight must have dtype float32"):
        _C.prelu_forward(x, w.astype(np.float64))
    with pytest.raises(ValueError, match="weight: dimension 0 must be 3"):
        _C.prelu_forward(x, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="weight must have 1 dimensions"):
        _C.prelu_forward(x, np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        _C.prelu_forward(np.zeros((3, 2), np.float32).T, w)
    with pytest.raises(ValueError, match="x must have at least 1"):
        _C.prelu_forward(np.zeros((), np.float32), w)
    with pytest.raises(ValueError, match="dy and x must have the same shape"):
        _C.prelu_backward(np.zeros((3, 3), np.float32), x, w)
    with pytest.raises(ValueError, match="weight: dimension 0 must be 3"):
        _C.prelu_backward(x, x, np.zeros(4, np.float32))
