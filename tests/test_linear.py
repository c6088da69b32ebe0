"""Linear layer (PyTorch layout W (OUT, IN)) against NumPy, finite differences, bad input."""
import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak, assert_unmodified, numeric_grad

SHAPES = [(1, 1, 1), (4, 7, 3), (33, 64, 10), (5, 512, 101), (0, 3, 2), (3, 0, 2), (3, 2, 0)]


@pytest.mark.parametrize("n,i,o", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_numpy(n, i, o, bias, rng):
    x = rng.standard_normal((n, i)).astype(np.float32)
    w = rng.standard_normal((o, i)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    y = assert_unmodified(lambda x, w: _C.linear_forward(x, w, b), x, w)
    ref = x.astype(np.float64) @ w.astype(np.float64).T + (0 if b is None else b)
    assert y.shape == (n, o)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    dy = rng.standard_normal((n, o)).astype(np.float32)
    dx, dw, db = assert_unmodified(lambda dy, x, w: _C.linear_backward(dy, x, w, bias), dy, x, w)
    d64 = dy.astype(np.float64)
    np.testing.assert_allclose(dx, d64 @ w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, d64.T @ x, rtol=1e-4, atol=1e-4)
    if bias:
        np.testing.assert_allclose(db, d64.sum(0), rtol=1e-5, atol=1e-5)
    else:
        assert db is None


def test_finite_differences(rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    w = rng.standard_normal((4, 5)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    g = rng.standard_normal((3, 4))
    loss = lambda: np.sum(g * _C.linear_forward(x, w, b).astype(np.float64))
    dx, dw, db = _C.linear_backward(g.astype(np.float32), x, w, True)
    np.testing.assert_allclose(dx, numeric_grad(loss, x, eps=1e-2), atol=1e-3)
    np.testing.assert_allclose(dw, numeric_grad(loss, w, eps=1e-2), atol=1e-3)
    np.testing.assert_allclose(db, numeric_grad(loss, b, eps=1e-2), atol=1e-3)


def test_no_reference_leaks(rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    w = rng.standard_normal((4, 5)).astype(np.float32)
    b = np.zeros(4, np.float32)
    dy = np.ones((3, 4), np.float32)
    assert_no_leak(_C.linear_forward, x, w, b)
    assert_no_leak(_C.linear_forward, x, w, None)
    assert_no_leak(_C.linear_backward, dy, x, w, True)
    assert_no_leak(_C.linear_backward, dy, x, w, False)


def test_bad_input():
    x = np.zeros((3, 5), np.float32)
    w = np.zeros((4, 5), np.float32)
    b = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _C.linear_forward(x.astype(np.float64), w, b)
    with pytest.raises(TypeError, match="b must have dtype float32"):
        _C.linear_forward(x, w, b.astype(np.int32))
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        _C.linear_forward(x[None], w, b)
    with pytest.raises(ValueError, match="w: dimension 1 must be 5"):
        _C.linear_forward(x, w.T.copy(), b)
    with pytest.raises(ValueError, match="w must be C-contiguous"):
        _C.linear_forward(x, np.zeros((5, 4), np.float32).T, b)
    with pytest.raises(ValueError, match="b: dimension 0 must be 4"):
        _C.linear_forward(x, w, np.zeros(5, np.float32))
    dy = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="x: dimension 0 must be 3"):
        _C.linear_backward(dy, x[:2].copy(), w, True)
    with pytest.raises(ValueError, match="w: dimension 0 must be 4"):
        _C.linear_backward(dy, x, w[:3].copy(), True)
    with pytest.raises(ValueError, match="w: dimension 1 must be 5"):
        _C.linear_backward(dy, x, np.zeros((4, 6), np.float32), True)
    with pytest.raises(TypeError, match="dy must be a numpy.ndarray"):
        _C.linear_backward(dy.tolist(), x, w, True)
