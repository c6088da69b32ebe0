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


@pytest.mark.parametrize("shape", SHAPES)
def test_add_backward_matches_numpy(shape, rng):
    dy = rng.standard_normal(shape).astype(np.float32)
    da, db = assert_unmodified(_C.add_backward, dy)
    for d in (da, db):
        assert d.shape == dy.shape and d.dtype == np.float32
        np.testing.assert_array_equal(d, dy)  # d(a + b)/da = d(a + b)/db = 1
    # two fresh arrays, not views of dy or of each other
    assert not np.shares_memory(da, dy) and not np.shares_memory(da, db)
    da[...] = 0
    np.testing.assert_array_equal(db, dy)


def test_add_backward_empty():
    da, db = _C.add_backward(np.zeros((0, 3), np.float32))
    assert da.shape == db.shape == (0, 3)


def test_add_finite_differences(rng):
    a = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    b = rng.standard_normal(a.shape).astype(np.float32)
    w = rng.standard_normal(a.shape)
    loss = lambda: np.sum(w * _C.add_forward(a, b).astype(np.float64))
    num_a = numeric_grad(loss, a, eps=1e-2)
    num_b = numeric_grad(loss, b, eps=1e-2)
    da, db = _C.add_backward(w.astype(np.float32))
    np.testing.assert_allclose(da, num_a, atol=1e-3)
    np.testing.assert_allclose(db, num_b, atol=1e-3)


def test_no_reference_leaks(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    assert_no_leak(_C.relu_forward, x)
    assert_no_leak(_C.relu_backward, x, x)
    assert_no_leak(_C.add_forward, x, x)
    assert_no_leak(_C.add_backward, x)


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
    with pytest.raises(TypeError, match="dy must have dtype float32"):
        _C.add_backward(x.astype(np.float64))
    with pytest.raises(TypeError, match="dy must be a numpy.ndarray"):
        _C.add_backward([1.0, 2.0])
    with pytest.raises(ValueError, match="dy must be C-contiguous"):
        _C.add_backward(np.ones((4, 4), np.float32)[:, ::2])
    with pytest.raises(TypeError):
        _C.add_backward(x, x)  # one argument, as cuda_add_backward(ctx, dy) takes one array
