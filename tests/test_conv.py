"""conv2d (NHWC, OHWI weights) against an independent NumPy reference, finite
differences, the += contract of the parameter gradients, and bad input."""
import sys

import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak, assert_unmodified, numeric_grad, sample_indices


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def ref_forward(x, w, b, stride, pad):
    """Direct convolution in float64: one einsum per kernel offset (ki, kj) over a
    strided view of the zero-padded input. x (N,H,W,C), w (O,KH,KW,C)."""
    (sh, sw), (ph, pw) = pair(stride), pair(pad)
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, h, wd, c = x.shape
    o, kh, kw, _ = w.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    xp = np.zeros((n, h + 2 * ph, wd + 2 * pw, c))
    xp[:, ph:ph + h, pw:pw + wd] = x
    y = np.zeros((n, oh, ow, o))
    for ki in range(kh):
        for kj in range(kw):
            patch = xp[:, ki:ki + sh * (oh - 1) + 1:sh, kj:kj + sw * (ow - 1) + 1:sw]
            y += np.einsum("nhwc,oc->nhwo", patch, w[:, ki, kj])
    if b is not None:
        y += np.asarray(b, np.float64)
    return y


def ref_backward(dy, x, w, stride, pad):
    """Gradients of sum(dy * conv(x, w, b)) written out from the same definition."""
    (sh, sw), (ph, pw) = pair(stride), pair(pad)
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, h, wd, c = x.shape
    o, kh, kw, _ = w.shape
    oh, ow = dy.shape[1:3]
    xp = np.zeros((n, h + 2 * ph, wd + 2 * pw, c))
    xp[:, ph:ph + h, pw:pw + wd] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    for ki in range(kh):
        for kj in range(kw):
            sl = (slice(None), slice(ki, ki + sh * (oh - 1) + 1, sh), slice(kj, kj + sw * (ow - 1) + 1, sw))
            dw[:, ki, kj] = np.einsum("nhwo,nhwc->oc", dy, xp[sl])
            dxp[sl] += np.einsum("nhwo,oc->nhwc", dy, w[:, ki, kj])
    return dxp[:, ph:ph + h, pw:pw + wd], dw, dy.sum(axis=(0, 1, 2))


# (N, H, W, Cin, Cout, (KH, KW), stride, pad)
CASES = [
    (2, 7, 9, 3, 5, (3, 3), 1, 1),
    (1, 11, 10, 4, 6, (3, 3), 2, 0),
    (2, 13, 9, 5, 3, (3, 3), 3, 2),
    (1, 9, 9, 8, 4, (1, 1), 1, 0),          # identity 1x1: no im2col
    (2, 9, 8, 8, 4, (1, 1), 2, 0),          # downsample 1x1 stride 2
    (1, 7, 7, 3, 2, (1, 1), 3, 1),          # 1x1 with padding
    (1, 17, 15, 3, 8, (7, 7), 2, 3),        # stem-like
    (2, 6, 11, 4, 3, (1, 3), 1, (0, 1)),    # non-square
    (1, 8, 9, 2, 3, (3, 5), (2, 1), (3, 0)),
    (1, 35, 33, 6, 4, (16, 16), 16, 0),     # Feature Rearrangement style, ragged edge
    (1, 4, 4, 3, 2, (3, 3), 1, 3),          # padding wider than the kernel reach
    (3, 5, 5, 1, 1, (5, 5), 1, 0),          # 1x1 output
]


def make(case, rng, bias=True):
    n, h, wd, c, o, (kh, kw), s, p = case
    x = rng.standard_normal((n, h, wd, c)).astype(np.float32)
    w = rng.standard_normal((o, kh, kw, c)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    return x, w, b, s, p


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(case, rng):
    x, w, b, s, p = make(case, rng)
    for bias in (b, None):
        y = assert_unmodified(lambda x, w: _C.conv2d_forward(x, w, bias, s, p), x, w)
        ref = ref_forward(x, w, bias, s, p)
        assert y.shape == ref.shape and y.dtype == np.float32
        scale = np.sqrt(w[0].size)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("case", CASES)
def test_backward_matches_reference(case, rng):
    x, w, b, s, p = make(case, rng)
    y = _C.conv2d_forward(x, w, b, s, p)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = assert_unmodified(lambda dy, x, w: _C.conv2d_backward(dy, x, w, s, p, True),
                                   dy, x, w)
    rdx, rdw, rdb = ref_backward(dy, x, w, s, p)
    m = dy.shape[0] * dy.shape[1] * dy.shape[2]
    np.testing.assert_allclose(dx, rdx, rtol=1e-5, atol=1e-5 * np.sqrt(w.shape[0] * 9))
    np.testing.assert_allclose(dw, rdw, rtol=1e-4, atol=1e-5 * np.sqrt(m))
    np.testing.assert_allclose(db, rdb, rtol=1e-5, atol=1e-5 * np.sqrt(m))
    # without bias and without dx (first layer)
    dx2, dw2, db2 = _C.conv2d_backward(dy, x, w, s, p, False, need_dx=False)
    assert dx2 is None and db2 is None
    np.testing.assert_array_equal(dw2, dw)


@pytest.mark.parametrize("omp", ["0", "1"])
def test_chunks_and_threads(omp, rng, monkeypatch):
    """Tiny chunks (GLAE_CONV_CHUNK_KB=1 -> 256 rows, boundaries inside output rows and
    images) with and without the OpenMP loops (GLAE_CONV_OMP) give the reference result,
    exercising the chunked im2col, the chunk-restricted col2im gather and the row
    gather/scatter of strided and padded 1x1 convs."""
    monkeypatch.setenv("GLAE_CONV_CHUNK_KB", "1")
    monkeypatch.setenv("GLAE_CONV_OMP", omp)
    for case in [(3, 23, 21, 16, 5, (3, 3), 1, 1), (2, 30, 29, 8, 4, (5, 3), (2, 1), (2, 1)),
                 (3, 33, 31, 40, 6, (1, 1), 2, 1), (2, 25, 27, 24, 3, (1, 1), 1, 0)]:
        x, w, b, s, p = make(case, rng)
        y = _C.conv2d_forward(x, w, b, s, p)
        np.testing.assert_allclose(y, ref_forward(x, w, b, s, p), rtol=1e-5, atol=1e-4)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx, dw, db = _C.conv2d_backward(dy, x, w, s, p, True)
        rdx, rdw, rdb = ref_backward(dy, x, w, s, p)
        np.testing.assert_allclose(dx, rdx, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(dw, rdw, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(db, rdb, rtol=1e-5, atol=1e-3)


def test_multi_chunk_default_size(rng):
    """One shape big enough for several default-size (16 MB) chunks."""
    x, w, b, s, p = make((4, 48, 48, 64, 8, (3, 3), 1, 1), rng)  # 21 MB of columns
    y = _C.conv2d_forward(x, w, b, s, p)
    np.testing.assert_allclose(y, ref_forward(x, w, b, s, p), rtol=1e-4, atol=1e-3)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, _ = _C.conv2d_backward(dy, x, w, s, p, False)
    rdx, rdw, _ = ref_backward(dy, x, w, s, p)
    np.testing.assert_allclose(dx, rdx, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dw, rdw, rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[5], CASES[8]])
def test_finite_differences(case, rng):
    x, w, b, s, p = make(case, rng)
    y = _C.conv2d_forward(x, w, b, s, p)
    g = rng.standard_normal(y.shape)
    dx, dw, db = _C.conv2d_backward(g.astype(np.float32), x, w, s, p, True)
    # loss in float64 of the float32 kernel output; it is linear in each argument, so
    # central differences are exact up to float32 rounding of y (~1e-7 relative), which
    # eps = 1e-2 turns into ~1e-4 absolute noise in the estimate
    loss = lambda: np.sum(g * _C.conv2d_forward(x, w, b, s, p).astype(np.float64))
    for arr, ana in ((x, dx), (w, dw), (b, db)):
        idx = sample_indices(arr.size, 12, rng)
        num = numeric_grad(loss, arr, eps=1e-2, idx=idx)
        np.testing.assert_allclose(ana.reshape(-1)[idx], num.reshape(-1)[idx], rtol=1e-3, atol=2e-3)


def test_parameter_gradients_accumulate(rng):
    x, w, b, s, p = make(CASES[1], rng)
    y = _C.conv2d_forward(x, w, b, s, p)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    _, dw, db = _C.conv2d_backward(dy, x, w, s, p, True)
    acc_w = rng.standard_normal(w.shape).astype(np.float32)
    acc_b = rng.standard_normal(b.shape).astype(np.float32)
    w0, b0 = acc_w.copy(), acc_b.copy()
    dx, rw, rb = _C.conv2d_backward(dy, x, w, s, p, True, dw_accumulate=acc_w, db_accumulate=acc_b)
    assert rw is acc_w and rb is acc_b  # the kernel added into the given arrays
    np.testing.assert_allclose(acc_w, w0 + dw, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(acc_b, b0 + db, rtol=1e-6, atol=1e-5)
    # a second backward adds again; dx is written (=), not accumulated
    dx2, _, _ = _C.conv2d_backward(dy, x, w, s, p, True, dw_accumulate=acc_w, db_accumulate=acc_b)
    np.testing.assert_allclose(acc_w, w0 + 2 * dw, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(dx2, dx)
    # identity 1x1 path too
    x, w, b, s, p = make(CASES[3], rng)
    dy = rng.standard_normal(_C.conv2d_forward(x, w, b, s, p).shape).astype(np.float32)
    _, dw, _ = _C.conv2d_backward(dy, x, w, s, p, False)
    acc = np.ones_like(w)
    _C.conv2d_backward(dy, x, w, s, p, False, need_dx=False, dw_accumulate=acc)
    np.testing.assert_allclose(acc, 1 + dw, rtol=1e-6, atol=1e-5)


def test_deterministic(rng):
    x, w, b, s, p = make((2, 20, 20, 16, 8, (3, 3), 1, 1), rng)
    y = _C.conv2d_forward(x, w, b, s, p)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    r1 = _C.conv2d_backward(dy, x, w, s, p, True)
    r2 = _C.conv2d_backward(dy, x, w, s, p, True)
    for a, c in zip(r1, r2):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(_C.conv2d_forward(x, w, b, s, p), y)


def test_stride_pad_forms(rng):
    x, w, b, _, _ = make((1, 9, 9, 2, 3, (3, 3), 1, 1), rng)
    np.testing.assert_array_equal(_C.conv2d_forward(x, w, b, 2, 1),
                                  _C.conv2d_forward(x, w, b, (2, 2), (1, 1)))
    y = _C.conv2d_forward(x, w, b, stride=(2, 1), pad=(0, 2))
    assert y.shape == (1, 4, 11, 3)


def test_zero_batch(rng):
    x = np.zeros((0, 5, 5, 3), np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = _C.conv2d_forward(x, w, None, 1, 1)
    assert y.shape == (0, 5, 5, 4)
    dx, dw, db = _C.conv2d_backward(y, x, w, 1, 1, True)
    assert dx.shape == x.shape and not dw.any() and not db.any()


def test_no_reference_leaks(rng):
    x, w, b, s, p = make(CASES[0], rng)
    y = _C.conv2d_forward(x, w, b, s, p)
    assert_no_leak(_C.conv2d_forward, x, w, b, s, p)
    assert_no_leak(_C.conv2d_backward, y, x, w, s, p, True)
    acc, accb = np.zeros_like(w), np.zeros_like(b)
    back = lambda *a: _C.conv2d_backward(*a, dw_accumulate=acc, db_accumulate=accb)
    assert_no_leak(back, y, x, w, s, p, True)
    before = sys.getrefcount(acc), sys.getrefcount(accb)
    for _ in range(50):
        back(y, x, w, s, p, True)
    assert (sys.getrefcount(acc), sys.getrefcount(accb)) == before
    assert_no_leak(_C.sgemm, x.reshape(-1, 3), w.reshape(w.shape[0], -1)[:, :3].T.copy())


def test_sgemm(rng):
    a = rng.standard_normal((37, 19)).astype(np.float32)
    b = rng.standard_normal((19, 23)).astype(np.float32)
    np.testing.assert_allclose(_C.sgemm(a, b), a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="b: dimension 0 must be 19"):
        _C.sgemm(a, a)


def test_bad_input():
    x = np.ones((1, 5, 5, 3), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    f = _C.conv2d_forward
    with pytest.raises(TypeError, match="x must have dtype float32"):
        f(x.astype(np.float64), w, None, 1, 1)
    with pytest.raises(TypeError, match="w must have dtype float32"):
        f(x, w.astype(np.float16), None, 1, 1)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        f(x.tolist(), w, None, 1, 1)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        f(x[0], w, None, 1, 1)
    with pytest.raises(ValueError, match="w must have 4 dimensions"):
        f(x, w[0], None, 1, 1)
    with pytest.raises(ValueError, match="x has 3 input channels .* expects 2"):
        f(x, w[..., :2].copy(), None, 1, 1)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        f(np.ones((1, 5, 10, 3), np.float32)[:, :, ::2], w, None, 1, 1)
    with pytest.raises(ValueError, match="w must be C-contiguous"):
        f(x, np.ones((8, 3, 3, 3), np.float32)[::2], None, 1, 1)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        f(x, w, None, 0, 1)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        f(x, w, None, (1, -2), 1)
    with pytest.raises(ValueError, match="pad must be >= 0"):
        f(x, w, None, 1, -1)
    with pytest.raises(TypeError, match="stride must be an int or a tuple of two ints"):
        f(x, w, None, (1, 2, 3), 1)
    with pytest.raises(TypeError, match="pad must be an int or a tuple of two ints"):
        f(x, w, None, 1, 1.5)
    with pytest.raises(ValueError, match="output size <= 0"):
        f(x, np.ones((4, 7, 3, 3), np.float32), None, 1, 0)
    with pytest.raises(ValueError, match="padded input size too large"):
        f(x, w, None, 1, 2**30)
    with pytest.raises(ValueError, match="b: dimension 0 must be 4"):
        f(x, w, np.ones(3, np.float32), 1, 1)
    with pytest.raises(TypeError, match="b must have dtype float32"):
        f(x, w, np.ones(4), 1, 1)
    y = f(x, w, None, 1, 1)
    g = _C.conv2d_backward
    with pytest.raises(ValueError, match="dy: dimension 3 must be 4"):
        g(y[..., :3].copy(), x, w, 1, 1, False)
    with pytest.raises(ValueError, match="dy: dimension 1 must be 3"):
        g(y, x, w, 2, 1, False)
    with pytest.raises(TypeError, match="dy must have dtype float32"):
        g(y.astype(np.float64), x, w, 1, 1, False)
    with pytest.raises(ValueError, match="dw_accumulate and w must have the same shape"):
        g(y, x, w, 1, 1, False, dw_accumulate=np.zeros((4, 3, 3, 2), np.float32))
    with pytest.raises(ValueError, match="db_accumulate given but has_bias is False"):
        g(y, x, w, 1, 1, False, db_accumulate=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="db_accumulate: dimension 0 must be 4"):
        g(y, x, w, 1, 1, True, db_accumulate=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="x has 3 input channels"):
        g(y, x, w[..., :2].copy(), 1, 1, False)
    with pytest.raises(ValueError, match="must not alias x, w or dy"):
        g(y, x, w, 1, 1, False, dw_accumulate=w)
    # accumulators are written in place: a read-only one (a memmap opened "r", an array
    # over bytes) used to be written anyway, or to segfault
    ro = np.zeros_like(w)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="dw_accumulate must be writeable"):
        g(y, x, w, 1, 1, False, dw_accumulate=ro)
    with pytest.raises(ValueError, match="db_accumulate must be writeable"):
        g(y, x, w, 1, 1, True, db_accumulate=np.frombuffer(bytes(16), np.float32))


def test_concurrent_calls(rng):
    """The binding keeps one scratch context; calls from several threads (GIL released)
    must not share it."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [make((2, 19, 17, 8, 6, (3, 3), 1, 1), rng) for _ in range(4)]
    want = [_C.conv2d_forward(x, w, b, s, p) for x, w, b, s, p in jobs]
    with ThreadPoolExecutor(4) as ex:
        for _ in range(3):
            got = list(ex.map(lambda j: _C.conv2d_forward(*j), jobs))
            for g, r in zip(got, want):
                np.testing.assert_array_equal(g, r)
