"""ReLU and the residual add against NumPy, finite differences, and bad input."""
import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak, assert_unmodified, numeric_grad

SHAPES = [(7,), (2, 3, 5, 4), (1, 8, 8, 64)]


@pytest.mark.parametrize("shape", SHAPES)
def test_relu_matches_numpy(shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    y = assert_unmodified(_C.relu_forward, x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    dy = rng.standard_normal(shape).astype(np.float32)
    dx = assert_unmodified(_C.relu_backward, dy, y)
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, 0))


def test_relu_finite_differences(rng):
    # keep inputs away from the kink at 0 where the derivative is undefined
    x = rng.uniform(0.1, 1.0, (2, 3, 3, 4)).astype(np.float32) * rng.choice([-1, 1], (2, 3, 3, 4))
    x = x.astype(np.float32)
    w = rng.standard_normal(x.shape)
    loss = lambda: np.sum(w * _C.relu_forward(x).astype(np.float64))
    num = numeric_grad(loss, x, eps=1e-2)
    ana = _C.relu_backward(w.astype(np.float32), _C.relu_forward(x))
    np.testing.assert_allclose(ana, num, atol=1e-3)


@pytest.mark.parametrize("shape", SHAPES)
def test_add_matches_numpy(shape, rng):
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(assert_unmodified(_C.add_forward, a, b), a + b)


def test_no_reference_leaks(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    assert_no_leak(_C.relu_forward, x)
    assert_no_leak(_C.relu_backward, x, x)
    assert_no_leak(_C.add_forward, x, x)


def test_bad_input():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _C.relu_forward(x.astype(np.float64))
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        _C.relu_forward([1.0, 2.0])
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        _C.relu_forward(np.ones((4, 4), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="dy and y must have the same shape"):
        _C.relu_backward(x, np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        _C.add_forward(x, np.ones(6, np.float32))
