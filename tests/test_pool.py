"""Max pool 2d (PyTorch output-size rule, ceil mode, -inf padding, first-max ties) and the
global average pool, against NumPy references, finite differences and bad input."""
import math

import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak, assert_unmodified, numeric_grad


def out_size(n, k, s, p, ceil):
    """PyTorch's pooling output size (dilation 1), written from its documentation."""
    num = n + 2 * p - k
    o = (math.ceil(num / s) if ceil else math.floor(num / s)) + 1
    if ceil and (o - 1) * s >= n + p:  # last window must start inside input or left pad
        o -= 1
    return o


def ref_maxpool(x, k, s, p, ceil):
    n, h, w, c = x.shape
    oh, ow = out_size(h, k, s, p, ceil), out_size(w, k, s, p, ceil)
    big_h, big_w = max(h + 2 * p, (oh - 1) * s + k), max(w + 2 * p, (ow - 1) * s + k)
    xp = np.full((n, big_h, big_w, c), -np.inf, np.float32)
    xp[:, p:p + h, p:p + w] = x
    # flat index of the padded grid position back into the unpadded image
    yy, xx = np.meshgrid(np.arange(big_h) - p, np.arange(big_w) - p, indexing="ij")
    y = np.empty((n, oh, ow, c), np.float32)
    arg = np.empty((n, oh, ow, c), np.int32)
    for i in range(oh):
        for j in range(ow):
            win = xp[:, i * s:i * s + k, j * s:j * s + k].reshape(n, k * k, c)
            pos = (yy * w + xx)[i * s:i * s + k, j * s:j * s + k].reshape(k * k)
            first = np.argmax(win, axis=1)  # NumPy argmax returns the first maximum
            y[:, i, j] = np.take_along_axis(win, first[:, None], 1)[:, 0]
            arg[:, i, j] = pos[first]
    return y, arg


CASES = [  # (shape, k, stride, pad, ceil)
    ((2, 8, 8, 3), 2, 2, 0, False),
    ((2, 7, 9, 4), 3, 2, 1, False),   # ResNet stem pool on an odd size
    ((1, 7, 9, 4), 3, 2, 1, True),
    ((2, 5, 5, 2), 2, 2, 0, True),    # ceil adds a partial last window
    ((1, 4, 4, 3), 2, 3, 1, True),    # ceil rule: the last window would start in the right pad
    ((3, 6, 5, 1), 3, 1, 1, False),   # overlapping windows
    ((1, 13, 11, 5), 3, 2, 0, True),  # MTCNN-style pools
    ((2, 3, 3, 2), 1, 1, 0, False),
]


def test_output_size_rule():
    # sizes PyTorch gives for these configurations
    assert out_size(112, 3, 2, 1, False) == 56
    assert out_size(5, 2, 2, 0, True) == 3 and out_size(5, 2, 2, 0, False) == 2
    assert out_size(4, 2, 3, 1, True) == 2  # ceil alone would give 3
    assert out_size(2, 2, 3, 1, True) == 1
    for h, k, s, p, ceil in [(112, 3, 2, 1, False), (5, 2, 2, 0, True), (4, 2, 3, 1, True),
                             (2, 2, 3, 1, True), (47, 3, 2, 0, True), (24, 3, 2, 0, True)]:
        y, _ = _C.maxpool2d_forward(np.zeros((1, h, h, 1), np.float32), k, s, p, ceil)
        assert y.shape[1:3] == (out_size(h, k, s, p, ceil),) * 2


@pytest.mark.parametrize("shape,k,s,p,ceil", CASES)
def test_maxpool_matches_numpy(shape, k, s, p, ceil, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    y, arg = assert_unmodified(lambda x: _C.maxpool2d_forward(x, k, s, p, ceil), x)
    ry, rarg = ref_maxpool(x, k, s, p, ceil)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(arg, rarg)
    assert arg.dtype == np.int32
    dy = rng.standard_normal(y.shape).astype(np.float32)
    n, h, w, c = shape
    dx = assert_unmodified(lambda dy, a: _C.maxpool2d_backward(dy, a, h, w, k, s, p, ceil), dy, arg)
    rdx = np.zeros((n, h * w, c), np.float64)
    for b in range(n):
        for ch in range(c):
            np.add.at(rdx[b, :, ch], rarg[b, ..., ch].ravel(), dy[b, ..., ch].ravel())
    np.testing.assert_allclose(dx, rdx.reshape(shape), rtol=1e-6, atol=1e-6)


def test_ties_padding_and_negative_inputs():
    # all equal: every window picks its first real element, in scan order
    x = np.full((1, 4, 4, 1), 3.0, np.float32)
    y, arg = _C.maxpool2d_forward(x, 3, 2, 1, False)
    np.testing.assert_array_equal(arg[0, ..., 0], [[0, 1], [4, 5]])
    dx = _C.maxpool2d_backward(np.ones_like(y), arg, 4, 4, 3, 2, 1, False)
    expect = np.zeros(16)
    np.add.at(expect, [0, 1, 4, 5], 1)
    np.testing.assert_array_equal(dx.ravel(), expect)
    # padding is -inf, not 0: all-negative inputs stay negative at the border
    x = -np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    y, arg = _C.maxpool2d_forward(x, 3, 1, 1, False)
    assert (y < 0).all()
    np.testing.assert_array_equal(y[0, ..., 0], [[-1, -1, -2], [-1, -1, -2], [-4, -4, -5]])
    # -inf inputs are real elements: the argmax still points inside the window
    x = np.full((1, 2, 2, 1), -np.inf, np.float32)
    y, arg = _C.maxpool2d_forward(x, 2, 2, 1, True)
    assert np.isneginf(y).all() and ((arg >= 0) & (arg < 4)).all()
    # NaN propagates (PyTorch)
    x = np.zeros((1, 2, 2, 1), np.float32)
    x[0, 1, 0, 0] = np.nan
    y, arg = _C.maxpool2d_forward(x, 2, 2, 0, False)
    assert np.isnan(y[0, 0, 0, 0]) and arg[0, 0, 0, 0] == 2


def test_maxpool_finite_differences(rng):
    # distinct, well separated values: no ties, so the max is differentiable
    shape = (2, 5, 6, 2)
    x = (rng.permutation(np.prod(shape)).reshape(shape) * 0.1).astype(np.float32)
    w = rng.standard_normal((2, 3, 4, 2))
    loss = lambda: np.sum(w * _C.maxpool2d_forward(x, 3, 2, 1, True)[0].astype(np.float64))
    y, arg = _C.maxpool2d_forward(x, 3, 2, 1, True)
    assert y.shape == w.shape
    ana = _C.maxpool2d_backward(w.astype(np.float32), arg, 5, 6, 3, 2, 1, True)
    np.testing.assert_allclose(ana, numeric_grad(loss, x, eps=1e-2), atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 7, 7, 16), (3, 1, 1, 2), (4, 2, 5, 1)])
def test_avgpool_matches_numpy(shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    y = assert_unmodified(_C.avgpool_forward, x)
    np.testing.assert_allclose(y, x.astype(np.float64).mean(axis=(1, 2)), rtol=1e-6, atol=1e-7)
    dy = rng.standard_normal((shape[0], shape[3])).astype(np.float32)
    dx = assert_unmodified(lambda dy: _C.avgpool_backward(dy, shape[1], shape[2]), dy)
    ref = np.broadcast_to(dy[:, None, None, :] / (shape[1] * shape[2]), shape)
    np.testing.assert_allclose(dx, ref, rtol=1e-6)


def test_avgpool_finite_differences(rng):
    x = rng.standard_normal((2, 3, 2, 4)).astype(np.float32)
    w = rng.standard_normal((2, 4))
    loss = lambda: np.sum(w * _C.avgpool_forward(x).astype(np.float64))
    ana = _C.avgpool_backward(w.astype(np.float32), 3, 2)
    np.testing.assert_allclose(ana, numeric_grad(loss, x, eps=1e-2), atol=1e-4)


def test_no_reference_leaks(rng):
    x = rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    y, arg = _C.maxpool2d_forward(x, 2, 2, 0)
    # only the arrays are counted (small ints are shared by the whole interpreter)
    assert_no_leak(lambda x: _C.maxpool2d_forward(x, 2, 2, 0), x)
    assert_no_leak(lambda y, a: _C.maxpool2d_backward(y, a, 4, 4, 2, 2, 0), y, arg)
    assert_no_leak(_C.avgpool_forward, x)
    assert_no_leak(lambda d: _C.avgpool_backward(d, 4, 4), y[:, 0, 0, :].copy())


def test_bad_input():
    x = np.zeros((1, 4, 4, 2), np.float32)
    fwd, bwd = _C.maxpool2d_forward, _C.maxpool2d_backward
    with pytest.raises(TypeError, match="x must have dtype float32"):
        fwd(x.astype(np.float64), 2, 2, 0)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        fwd(x[0], 2, 2, 0)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        fwd(np.zeros((1, 4, 8, 2), np.float32)[:, :, ::2], 2, 2, 0)
    with pytest.raises(ValueError, match="kernel size must be >= 1"):
        fwd(x, 0, 2, 0)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        fwd(x, 2, -1, 0)
    with pytest.raises(ValueError, match="pad must be >= 0"):
        fwd(x, 2, 2, -1)
    with pytest.raises(ValueError, match="pad must be at most half"):
        fwd(x, 3, 2, 2)
    with pytest.raises(ValueError, match="output size"):
        fwd(x, 5, 1, 0)  # kernel larger than the input
    y, arg = fwd(x, 2, 2, 0)
    with pytest.raises(TypeError, match="argmax must have dtype int32"):
        bwd(y, arg.astype(np.int64), 4, 4, 2, 2, 0)
    with pytest.raises(ValueError, match="dy and argmax must have the same shape"):
        bwd(y, arg[:, :1].copy(), 4, 4, 2, 2, 0)
    with pytest.raises(ValueError, match="dy: dimension 1 must be 3"):
        bwd(y, arg, 6, 4, 2, 2, 0)  # dy does not match the given input size
    with pytest.raises(ValueError, match="h must be >= 0"):
        bwd(y, arg, -4, 4, 2, 2, 0)
    bad = arg.copy()
    bad[0, 0, 0, 0] = 16
    with pytest.raises(ValueError, match="argmax holds an index outside"):
        bwd(y, bad, 4, 4, 2, 2, 0)
    bad[0, 0, 0, 0] = -1
    with pytest.raises(ValueError, match="argmax holds an index outside"):
        bwd(y, bad, 4, 4, 2, 2, 0)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        _C.avgpool_forward(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="H\\*W = 0"):
        _C.avgpool_forward(np.zeros((1, 0, 3, 2), np.float32))
    with pytest.raises(ValueError, match="dy must have 2 dimensions"):
        _C.avgpool_backward(x, 2, 2)
    with pytest.raises(ValueError, match="w must be >= 1"):
        _C.avgpool_backward(np.zeros((1, 2), np.float32), 2, 0)
    with pytest.raises(TypeError, match="dy must have dtype float32"):
        _C.avgpool_backward(np.zeros((1, 2)), 2, 2)
