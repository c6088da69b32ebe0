"""Pixel shuffle on NHWC storage against PyTorch's NCHW definition (an explicit index
formula and a reshape/transpose implementation), its backward, and the NHWC hflip."""
import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak, assert_unmodified, numeric_grad

CASES = [((1, 1, 1, 4), 2), ((2, 3, 4, 8), 2), ((1, 2, 3, 18), 3), ((2, 5, 4, 3), 1),
         ((1, 7, 7, 64), 4), ((3, 2, 2, 32), 2)]


def ref_index(x, r):
    """out[n, c, h*r + i, w*r + j] = in[n, c*r*r + i*r + j, h, w], in NHWC coordinates."""
    n, h, w, crr = x.shape
    c = crr // (r * r)
    out = np.empty((n, h * r, w * r, c), x.dtype)
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                out[:, i::r, j::r, ch] = x[:, :, :, ch * r * r + i * r + j]
    return out


def ref_torch_def(x, r):
    """PyTorch's PixelShuffle on the NCHW tensor: view (N, C, r, r, H, W), permute
    (0, 1, 4, 2, 5, 3), reshape (N, C, H*r, W*r); NHWC in and out."""
    nchw = x.transpose(0, 3, 1, 2)
    n, crr, h, w = nchw.shape
    c = crr // (r * r)
    y = nchw.reshape(n, c, r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c, h * r, w * r)
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1))


def ref_torch_unshuffle(dy, r):
    """PixelUnshuffle(r), the inverse permutation, on NHWC storage."""
    nchw = dy.transpose(0, 3, 1, 2)
    n, c, hr, wr = nchw.shape
    h, w = hr // r, wr // r
    x = nchw.reshape(n, c, h, r, w, r).transpose(0, 1, 3, 5, 2, 4).reshape(n, c * r * r, h, w)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("shape,r", CASES)
def test_forward_backward_match_pytorch_definition(shape, r, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    y = assert_unmodified(lambda x: _C.pixel_shuffle_forward(x, r), x)
    np.testing.assert_array_equal(y, ref_index(x, r))
    np.testing.assert_array_equal(y, ref_torch_def(x, r))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = assert_unmodified(lambda dy: _C.pixel_shuffle_backward(dy, r), dy)
    np.testing.assert_array_equal(dx, ref_torch_unshuffle(dy, r))
    np.testing.assert_array_equal(_C.pixel_shuffle_backward(y, r), x)  # inverse permutation
    # adjoint: <shuffle(x), dy> == <x, backward(dy)>
    a = np.dot(y.ravel().astype(np.float64), dy.ravel())
    b = np.dot(x.ravel().astype(np.float64), dx.ravel())
    assert abs(a - b) <= 1e-9 * max(1.0, abs(a))


def test_small_known_layout():
    # C = 1, r = 2 on a 1x1 image: channels 0..3 become the 2x2 block in row-major order
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4)
    np.testing.assert_array_equal(_C.pixel_shuffle_forward(x, 2)[0, ..., 0], [[0, 1], [2, 3]])
    # C = 2: channels 0..3 form output channel 0, channels 4..7 output channel 1
    x = np.arange(8, dtype=np.float32).reshape(1, 1, 1, 8)
    y = _C.pixel_shuffle_forward(x, 2)
    np.testing.assert_array_equal(y[0, ..., 1], [[4, 5], [6, 7]])


def test_finite_differences(rng):
    x = rng.standard_normal((1, 2, 2, 8)).astype(np.float32)
    w = rng.standard_normal((1, 4, 4, 2))
    loss = lambda: np.sum(w * _C.pixel_shuffle_forward(x, 2).astype(np.float64))
    ana = _C.pixel_shuffle_backward(w.astype(np.float32), 2)
    np.testing.assert_allclose(ana, numeric_grad(loss, x, eps=1e-2), atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 1, 1, 1), (1, 4, 8, 3), (2, 2, 6, 0)])
def test_hflip(shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    y = assert_unmodified(_C.hflip_forward, x)
    np.testing.assert_array_equal(y, x[:, :, ::-1, :])
    np.testing.assert_array_equal(_C.hflip_forward(y), x)


def test_no_reference_leaks(rng):
    x = rng.standard_normal((1, 2, 2, 8)).astype(np.float32)
    y = _C.pixel_shuffle_forward(x, 2)
    assert_no_leak(lambda x: _C.pixel_shuffle_forward(x, 2), x)
    assert_no_leak(lambda y: _C.pixel_shuffle_backward(y, 2), y)
    assert_no_leak(_C.hflip_forward, x)


def test_bad_input():
    x = np.zeros((1, 2, 2, 8), np.float32)
    fwd, bwd = _C.pixel_shuffle_forward, _C.pixel_shuffle_backward
    with pytest.raises(TypeError, match="x must have dtype float32"):
        fwd(x.astype(np.float16), 2)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        fwd(x[0], 2)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        fwd(np.zeros((1, 2, 2, 16), np.float32)[..., ::2], 2)
    with pytest.raises(ValueError, match="not divisible by r\\*r = 9"):
        fwd(x, 3)
    with pytest.raises(ValueError, match="r must be >= 1"):
        fwd(x, 0)
    with pytest.raises(ValueError, match="r must be >= 1"):
        bwd(x, -2)
    with pytest.raises(ValueError, match="not divisible by r = 3"):
        bwd(np.zeros((1, 4, 6, 2), np.float32), 3)
    with pytest.raises(ValueError, match="dy must have 4 dimensions"):
        bwd(np.zeros((4, 4), np.float32), 2)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        _C.hflip_forward([[1.0]])
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        _C.hflip_forward(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        _C.hflip_forward(np.zeros((1, 2, 4, 2), np.float32)[:, :, ::2])
