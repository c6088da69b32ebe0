"""Softmax and log-softmax over the last axis against NumPy (float64), stability with large
logits, finite differences, bad input."""
import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak, assert_unmodified, numeric_grad

SHAPES = [(1,), (5, 7), (3, 101), (2, 3, 4, 10), (64, 1), (4, 0), (0, 3)]


def ref_log_softmax(x):
    x = x.astype(np.float64)
    if x.shape[-1] == 0:
        return x
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_numpy(shape, rng):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    ls = ref_log_softmax(x)
    sm = np.exp(ls)
    y = assert_unmodified(_C.softmax_forward, x)
    np.testing.assert_allclose(y, sm, rtol=1e-6, atol=1e-7)
    dx = assert_unmodified(_C.softmax_backward, dy, y)
    d64 = dy.astype(np.float64)
    np.testing.assert_allclose(dx, sm * (d64 - (d64 * sm).sum(-1, keepdims=True)), rtol=1e-5, atol=1e-6)
    ly = assert_unmodified(_C.log_softmax_forward, x)
    np.testing.assert_allclose(ly, ls, rtol=1e-6, atol=1e-6)
    ldx = assert_unmodified(_C.log_softmax_backward, dy, ly)
    np.testing.assert_allclose(ldx, d64 - sm * d64.sum(-1, keepdims=True), rtol=1e-5, atol=1e-5)


def test_numerically_stable():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1001.0, -999.0], [88.0, 89.0, -3e38]],
                 np.float32)
    y = _C.softmax_forward(x)
    ly = _C.log_softmax_forward(x)
    assert np.isfinite(y).all() and np.isfinite(ly).all()
    np.testing.assert_allclose(y, np.exp(ref_log_softmax(x)), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(ly, ref_log_softmax(x), rtol=1e-6)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-6)
    # -inf logits get probability 0 and log-probability -inf, like PyTorch
    x = np.array([[0.0, -np.inf, 1.0]], np.float32)
    assert _C.softmax_forward(x)[0, 1] == 0.0
    assert np.isneginf(_C.log_softmax_forward(x)[0, 1])


def test_finite_differences(rng):
    x = rng.standard_normal((3, 6)).astype(np.float32)
    w = rng.standard_normal((3, 6))
    for fwd, bwd in [(_C.softmax_forward, _C.softmax_backward),
                     (_C.log_softmax_forward, _C.log_softmax_backward)]:
        loss = lambda: np.sum(w * fwd(x).astype(np.float64))
        ana = bwd(w.astype(np.float32), fwd(x))
        np.testing.assert_allclose(ana, numeric_grad(loss, x, eps=1e-2), atol=1e-3)


def test_no_reference_leaks(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    for fwd, bwd in [(_C.softmax_forward, _C.softmax_backward),
                     (_C.log_softmax_forward, _C.log_softmax_backward)]:
        assert_no_leak(fwd, x)
        assert_no_leak(bwd, x, fwd(x))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_bad_input(name):
    fwd, bwd = getattr(_C, name + "_forward"), getattr(_C, name + "_backward")
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        fwd(x.astype(np.float64))
    with pytest.raises(ValueError, match="x must have at least 1"):
        fwd(np.zeros((), np.float32))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        fwd(np.zeros((3, 2), np.float32).T)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        fwd([1.0, 2.0])
    with pytest.raises(ValueError, match="dy and y must have the same shape"):
        bwd(x, np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match="y must have dtype float32"):
        bwd(x, x.astype(np.int32))
