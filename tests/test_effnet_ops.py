"""The layers EfficientNetV2 adds (issue 22): depthwise convolution, SiLU, sigmoid and the
channel scale of squeeze-and-excitation (which, with one channel, also scales whole samples
for stochastic depth). Each against an independent NumPy reference in float64, finite
differences, poisoned outputs (conftest) and bad input, on every backend (the `dev`
fixture: the CPU, and a GPU where one is usable)."""
import numpy as np
import pytest

from glae import _C

from helpers import assert_unmodified, numeric_grad


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---- NumPy references -------------------------------------------------------------------

def dwconv_ref(x, w, b, stride, pad):
    """depthwise conv in float64: x (N, H, W, C), w (C, KH, KW, 1) -> (N, OH, OW, C)"""
    n, h, wd, c = x.shape
    kh, kw = w.shape[1], w.shape[2]
    xp = np.zeros((n, h + 2 * pad, wd + 2 * pad, c))
    xp[:, pad:pad + h, pad:pad + wd] = x
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    y = np.zeros((n, oh, ow, c))
    for ky in range(kh):
        for kx in range(kw):
            win = xp[:, ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride]
            y += win * w[:, ky, kx, 0].astype(np.float64)
    return y + (0 if b is None else b.astype(np.float64))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


# ---- depthwise convolution ---------------------------------------------------------------

DW_CASES = [  # (n, h, w, c, k, stride, pad)
    (2, 7, 7, 5, 3, 1, 1),
    (2, 9, 8, 16, 3, 2, 1),
    (1, 6, 6, 3, 5, 1, 2),
    (2, 11, 11, 24, 5, 2, 2),
    (1, 4, 4, 1, 1, 1, 0),
]


@pytest.mark.parametrize("case", DW_CASES)
def test_dwconv_matches_numpy(dev, rng, case):
    n, h, w, c, k, s, p = case
    x, wt, b = f32(rng, n, h, w, c), f32(rng, c, k, k, 1, scale=0.3), f32(rng, c)
    y = assert_unmodified(lambda *a: _C.dwconv2d_forward(*a, s, p, ctx=dev), x, wt, b)
    ref = dwconv_ref(x, wt, b, s, p)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_C.dwconv2d_forward(x, wt, None, s, p, ctx=dev),
                               dwconv_ref(x, wt, None, s, p), rtol=1e-5, atol=1e-5)
    # backward against the transposed NumPy reference: d<y, g>/dx, /dw, /db
    g = f32(rng, *y.shape)
    dx, dw, db = _C.dwconv2d_backward(g, x, wt, s, p, True, ctx=dev)
    xp = np.zeros((n, h + 2 * p, w + 2 * p, c))
    rdw = np.zeros(wt.shape)
    oh, ow = y.shape[1], y.shape[2]
    g64 = g.astype(np.float64)
    xpad = np.zeros_like(xp)
    xpad[:, p:p + h, p:p + w] = x
    for ky in range(k):
        for kx in range(k):
            sl = (slice(None), slice(ky, ky + s * (oh - 1) + 1, s), slice(kx, kx + s * (ow - 1) + 1, s))
            xp[sl] += g64 * wt[:, ky, kx, 0]
            rdw[:, ky, kx, 0] = np.einsum("nhwc,nhwc->c", xpad[sl], g64)
    np.testing.assert_allclose(dx, xp[:, p:p + h, p:p + w], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, rdw, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(db, g64.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-4)
    dx2, dw2, db2 = _C.dwconv2d_backward(g, x, wt, s, p, False, need_dx=False, ctx=dev)
    assert dx2 is None and db2 is None
    np.testing.assert_array_equal(dw2, dw)


def test_dwconv_finite_differences(rng):
    x, wt, b = f32(rng, 2, 5, 5, 3), f32(rng, 3, 3, 3, 1, scale=0.5), f32(rng, 3)
    g = rng.standard_normal((2, 3, 3, 3))
    loss = lambda: np.sum(g * _C.dwconv2d_forward(x, wt, b, 2, 1).astype(np.float64))
    dx, dw, db = _C.dwconv2d_backward(g.astype(np.float32), x, wt, 2, 1, True)
    np.testing.assert_allclose(dx, numeric_grad(loss, x, eps=1e-2), atol=2e-3)
    np.testing.assert_allclose(dw, numeric_grad(loss, wt, eps=1e-2), atol=2e-3)
    np.testing.assert_allclose(db, numeric_grad(loss, b, eps=1e-2), atol=2e-3)


def test_dwconv_is_independent_of_threads(rng):
    x, wt = f32(rng, 4, 32, 32, 32), f32(rng, 32, 3, 3, 1)  # big enough for a thread team
    g = f32(rng, 4, 32, 32, 32)
    before = _C.get_num_threads()
    try:
        _C.set_num_threads(1)
        one = _C.dwconv2d_backward(g, x, wt, 1, 1, True)
        _C.set_num_threads(2)
        two = _C.dwconv2d_backward(g, x, wt, 1, 1, True)
    finally:
        _C.set_num_threads(before)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_dwconv_bad_input(dev):
    x = np.zeros((1, 5, 5, 4), np.float32)
    with pytest.raises(ValueError, match=r"\(C, KH, KW, 1\)"):
        _C.dwconv2d_forward(x, np.zeros((4, 3, 3, 4), np.float32), None, 1, 1, ctx=dev)
    with pytest.raises(ValueError, match=r"\(C, KH, KW, 1\)"):
        _C.dwconv2d_forward(x, np.zeros((3, 3, 3, 1), np.float32), None, 1, 1, ctx=dev)
    with pytest.raises(TypeError, match="x"):
        _C.dwconv2d_forward(x.astype(np.float64), np.zeros((4, 3, 3, 1), np.float32), None, 1, 1, ctx=dev)
    with pytest.raises(ValueError, match="stride"):
        _C.dwconv2d_forward(x, np.zeros((4, 3, 3, 1), np.float32), None, 0, 1, ctx=dev)
    with pytest.raises(ValueError, match="b"):
        _C.dwconv2d_forward(x, np.zeros((4, 3, 3, 1), np.float32), np.zeros(3, np.float32), 1, 1, ctx=dev)
    with pytest.raises(ValueError, match="dy"):
        _C.dwconv2d_backward(np.zeros((1, 4, 4, 4), np.float32), x, np.zeros((4, 3, 3, 1), np.float32),
                             1, 1, True, ctx=dev)


# ---- SiLU, sigmoid ------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7,), (2, 3, 5, 4), (1, 8, 8, 64)])
def test_silu_sigmoid_match_numpy(dev, rng, shape):
    x = f32(rng, *shape, scale=4.0)
    x.flat[0] = -200.0  # exp(200) overflows float32: the answer is still -0 / 0
    s = sigmoid(x)
    y = assert_unmodified(lambda a: _C.silu_forward(a, ctx=dev), x)
    np.testing.assert_allclose(y, x * s, rtol=1e-6, atol=1e-6)
    sg = _C.sigmoid_forward(x, ctx=dev)
    np.testing.assert_allclose(sg, s, rtol=1e-6, atol=1e-7)
    g = f32(rng, *shape)
    np.testing.assert_allclose(_C.silu_backward(g, x, ctx=dev), g * (s * (1 + x * (1 - s))),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_C.sigmoid_backward(g, sg, ctx=dev), g * sg * (1 - sg),
                               rtol=1e-5, atol=1e-7)
    assert np.isfinite(_C.silu_backward(g, x, ctx=dev)).all()


def test_silu_sigmoid_finite_differences(rng):
    x = f32(rng, 2, 3, 4, 5, scale=2.0)
    w = rng.standard_normal(x.shape)
    for fwd, bwd in ((_C.silu_forward, lambda g: _C.silu_backward(g, x)),
                     (_C.sigmoid_forward, lambda g: _C.sigmoid_backward(g, _C.sigmoid_forward(x)))):
        loss = lambda: np.sum(w * fwd(x).astype(np.float64))
        np.testing.assert_allclose(bwd(w.astype(np.float32)), numeric_grad(loss, x, eps=1e-2), atol=1e-3)


def test_silu_sigmoid_bad_input(dev):
    with pytest.raises(TypeError, match="x"):
        _C.silu_forward(np.zeros(3, np.float64), ctx=dev)
    with pytest.raises(ValueError, match="same shape"):
        _C.silu_backward(np.zeros(3, np.float32), np.zeros(4, np.float32), ctx=dev)
    with pytest.raises(ValueError, match="same shape"):
        _C.sigmoid_backward(np.zeros(3, np.float32), np.zeros(4, np.float32), ctx=dev)


# ---- channel scale (squeeze-and-excitation, stochastic depth) --------------------------

@pytest.mark.parametrize("shape", [(2, 5, 5, 8), (3, 7, 1), (2, 4, 4, 3, 6)])
def test_channel_scale_matches_numpy(dev, rng, shape):
    x = f32(rng, *shape)
    sc = f32(rng, shape[0], shape[-1])
    bshape = (shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],)
    y = assert_unmodified(lambda a, b: _C.channel_scale_forward(a, b, ctx=dev), x, sc)
    np.testing.assert_array_equal(y, x * sc.reshape(bshape))
    g = f32(rng, *shape)
    dx, dsc = _C.channel_scale_backward(g, x, sc, ctx=dev)
    np.testing.assert_array_equal(dx, g * sc.reshape(bshape))
    axes = tuple(range(1, len(shape) - 1))
    ref = (g.astype(np.float64) * x).sum(axis=axes).reshape(sc.shape)
    np.testing.assert_allclose(dsc, ref, rtol=1e-5, atol=1e-5)


def test_channel_scale_drops_whole_samples(rng):
    """stochastic depth: C = 1 over the whole sample, scale 0 drops it, 1/(1-p) keeps it"""
    x = f32(rng, 4, 3, 3, 8)
    keep = np.array([0.0, 1.25, 1.25, 0.0], np.float32)[:, None]
    y = _C.channel_scale_forward(x.reshape(4, -1, 1), keep).reshape(x.shape)
    np.testing.assert_array_equal(y[0], 0)
    np.testing.assert_array_equal(y[1], x[1] * np.float32(1.25))


def test_channel_scale_finite_differences(rng):
    x, sc = f32(rng, 2, 3, 3, 4), f32(rng, 2, 4)
    w = rng.standard_normal(x.shape)
    loss = lambda: np.sum(w * _C.channel_scale_forward(x, sc).astype(np.float64))
    dx, dsc = _C.channel_scale_backward(w.astype(np.float32), x, sc)
    np.testing.assert_allclose(dx, numeric_grad(loss, x, eps=1e-2), atol=1e-3)
    np.testing.assert_allclose(dsc, numeric_grad(loss, sc, eps=1e-2), atol=1e-3)


def test_channel_scale_bad_input(dev):
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="scale"):
        _C.channel_scale_forward(x, np.zeros((2, 3), np.float32), ctx=dev)
    with pytest.raises(ValueError, match="scale"):
        _C.channel_scale_forward(x, np.zeros((3, 4), np.float32), ctx=dev)
    with pytest.raises(ValueError, match="dimension"):
        _C.channel_scale_forward(np.zeros(4, np.float32), np.zeros((1, 4), np.float32), ctx=dev)


# ---- stochastic depth's draw --------------------------------------------------------------

def test_drop_path_scales():
    p = 0.2
    s = _C.drop_path_scales(20000, p, 7, 3, 5)
    keep = np.float32(1.0) / np.float32(1.0 - np.float32(p))
    assert set(np.unique(s)) <= {0.0, keep}
    # Bernoulli(1 - p) keeps: 20000 draws, 5 sigma = 5 * sqrt(p (1-p) / n) = 0.014
    assert abs(np.mean(s > 0) - (1 - p)) < 0.015
    # a pure function of (seed, step, block, sample): the first samples do not depend on n
    np.testing.assert_array_equal(_C.drop_path_scales(100, p, 7, 3, 5), s[:100])
    assert not np.array_equal(_C.drop_path_scales(100, p, 7, 4, 5), s[:100])  # another step
    assert not np.array_equal(_C.drop_path_scales(100, p, 7, 3, 6), s[:100])  # another block
    assert not np.array_equal(_C.drop_path_scales(100, p, 8, 3, 5), s[:100])  # another seed
    np.testing.assert_array_equal(_C.drop_path_scales(50, 0.0, 1, 1, 1), np.ones(50, np.float32))
    # the per-sample scale drops whole residual branches through channel_scale
    x = np.ones((100, 2, 2, 3), np.float32)
    y = _C.channel_scale_forward(x.reshape(100, -1, 1), s[:100, None]).reshape(x.shape)
    np.testing.assert_array_equal(y.reshape(100, -1).max(axis=1), s[:100])


def test_drop_path_scales_bad_input():
    for p in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="p must be in"):
            _C.drop_path_scales(4, p, 0, 0, 0)
    with pytest.raises(ValueError, match="n"):
        _C.drop_path_scales(-1, 0.1, 0, 0, 0)
    with pytest.raises(TypeError, match="seed"):
        _C.drop_path_scales(4, 0.1, 1.5, 0, 0)
