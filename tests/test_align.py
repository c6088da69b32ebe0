"""5-point similarity alignment, affine warps, the antialiased resampler: against NumPy
references written here, plus bad input."""
import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak, assert_unmodified

ARCFACE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                    [41.5493, 92.3655], [70.7299, 92.2041]])


def similarity(theta, s, tx, ty):
    c, sn = np.cos(theta) * s, np.sin(theta) * s
    return np.array([[c, -sn, tx], [sn, c, ty]])


def apply(M, pts):
    return pts @ M[:, :2].T + M[:, 2]


def smooth_image(h, w, rng):
    """Low-frequency RGB pattern: bilinear resampling of it is nearly exact."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for c in range(3):
        fx, fy, ph = rng.uniform(0.02, 0.06), rng.uniform(0.02, 0.06), rng.uniform(0, 6)
        chans.append(127.5 + 100 * np.sin(fx * x + ph) * np.cos(fy * y - ph))
    return np.clip(np.rint(np.stack(chans, -1)), 0, 255).astype(np.uint8)


def ref_warp(img, M, oh, ow, border):
    """Bilinear, output pixel (x, y) samples the input at M^-1 (x, y); pixel centres at
    integer coordinates; constant border = neighbours outside count as 0."""
    A = np.vstack([M, [0, 0, 1]])
    Mi = np.linalg.inv(A)[:2]
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:oh, 0:ow].astype(np.float64)
    sx = Mi[0, 0] * xs + Mi[0, 1] * ys + Mi[0, 2]
    sy = Mi[1, 0] * xs + Mi[1, 1] * ys + Mi[1, 2]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    ax, ay = sx - x0, sy - y0
    out = np.zeros((oh, ow, 3))
    f = img.astype(np.float64)
    for dy in (0, 1):
        for dx in (0, 1):
            wgt = (ay if dy else 1 - ay) * (ax if dx else 1 - ax)
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            yc, xc = np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)
            v = f[yc, xc]
            if border == "constant":
                v = v * inside[..., None]
            out += wgt[..., None] * v
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def ref_resize(img, box, oh, ow, flip=False):
    """Separable triangle filter of radius max(scale, 1) (PIL-style antialiased bilinear),
    taps outside the image dropped and the rest renormalised."""
    x0, y0, bw, bh = box

    def matrix(n, start, length, size):
        scale = length / n
        fs = max(scale, 1.0)
        W = np.zeros((n, size))
        for i in range(n):
            c = start + (i + 0.5) * scale
            j = np.arange(size)
            t = np.abs((j + 0.5 - c) / fs)
            W[i] = np.where(t < 1, 1 - t, 0)
            W[i] /= W[i].sum()
        return W

    Wy = matrix(oh, y0, bh, img.shape[0])
    Wx = matrix(ow, x0, bw, img.shape[1])
    out = np.einsum("yi,ijc,xj->yxc", Wy, img.astype(np.float64), Wx)
    out = np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return out[:, ::-1] if flip else out


# ---- template and similarity ------------------------------------------------------------

def test_template_is_arcface_scaled():
    np.testing.assert_allclose(_C.template_points(112), ARCFACE, rtol=1e-6)
    np.testing.assert_allclose(_C.template_points(224), ARCFACE * 2, rtol=1e-6)
    for size, m in [(224, 0.1), (100, 0.25)]:
        k = 1 + 2 * m
        want = ARCFACE * size / (112 * k) + size * m / k
        np.testing.assert_allclose(_C.template_points(size, margin=m), want, rtol=1e-5)
    assert _C.template_points(5).dtype == np.float32


@pytest.mark.parametrize("theta,s,tx,ty", [(0.3, 1.7, 12.0, -5.0), (-1.2, 0.4, 100.0, 40.0),
                                           (2.9, 3.0, -20.0, 7.5), (0.0, 1.0, 0.0, 0.0)])
def test_similarity_recovers_known_transform(theta, s, tx, ty):
    T = similarity(theta, s, tx, ty)
    src = _C.template_points(224)
    dst = apply(T, src.astype(np.float64)).astype(np.float32)
    M = assert_unmodified(_C.similarity_transform, src, dst)
    assert M.dtype == np.float64 and M.shape == (2, 3)
    np.testing.assert_allclose(M, T, atol=1e-4 * max(1, abs(tx), abs(ty)))
    # and the inverse direction
    Mi = _C.similarity_transform(dst, src)
    np.testing.assert_allclose(apply(Mi, dst.astype(np.float64)), src, atol=2e-3)


def test_similarity_matches_least_squares(rng):
    """Noisy points: compare with NumPy's least squares over (a, b, tx, ty)."""
    src = rng.uniform(0, 200, (5, 2)).astype(np.float32)
    dst = (apply(similarity(0.5, 1.3, 4, 9), src.astype(np.float64))
           + rng.normal(0, 3, (5, 2))).astype(np.float32)
    s, d = src.astype(np.float64), dst.astype(np.float64)
    A = np.zeros((10, 4))
    A[0::2] = np.c_[s[:, 0], -s[:, 1], np.ones(5), np.zeros(5)]
    A[1::2] = np.c_[s[:, 1], s[:, 0], np.zeros(5), np.ones(5)]
    a, b, tx, ty = np.linalg.lstsq(A, d.reshape(-1), rcond=None)[0]
    np.testing.assert_allclose(_C.similarity_transform(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-6)


def test_similarity_never_reflects():
    src = _C.template_points(112)
    dst = src.copy()
    dst[:, 0] = 112 - dst[:, 0]  # mirror image: the best similarity is not a reflection
    M = _C.similarity_transform(src, dst)
    assert np.linalg.det(M[:, :2]) > 0


# ---- warps ------------------------------------------------------------------------------

@pytest.mark.parametrize("border", ["constant", "replicate"])
def test_warp_matches_numpy(border, rng):
    img = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
    M = similarity(0.4, 1.2, 5.0, -8.0)
    M[0, 1] += 0.1  # a general affine
    out = assert_unmodified(lambda i, m: _C.warp_affine(i, m, 41, 50, border=border), img, M)
    ref = ref_warp(img, M, 41, 50, border)
    d = np.abs(out.astype(int) - ref)
    assert d.max() <= 1 and (d > 0).mean() < 0.01


def test_warp_identity_and_integer_shift(rng):
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_C.warp_affine(img, np.array([[1., 0, 0], [0, 1, 0]]), 20, 30), img)
    sh = _C.warp_affine(img, np.array([[1., 0, 3], [0, 1, -2]]), 20, 30)
    np.testing.assert_array_equal(sh[:18, 3:], img[2:, :27])
    assert (sh[:, :3] == 0).all() and (sh[18:] == 0).all()
    rep = _C.warp_affine(img, np.array([[1., 0, 3], [0, 1, 0]]), 20, 30, border="replicate")
    np.testing.assert_array_equal(rep[:, :3], np.repeat(img[:, :1], 3, axis=1))


def test_align_face_undoes_a_similarity(rng):
    size = 112
    face = smooth_image(size, size, rng)
    T = similarity(0.35, 1.4, 80.0, 10.0)  # the whole face stays inside the 260 canvas
    big = _C.warp_affine(face, T, 260, 260, border="replicate")
    lm = apply(T, _C.template_points(size).astype(np.float64)).astype(np.float32)
    out = assert_unmodified(lambda a, b: _C.align_face(a, b, size=size), big, lm)
    assert out.shape == (size, size, 3)
    d = np.abs(out[8:-8, 8:-8].astype(int) - face[8:-8, 8:-8])
    assert d.mean() < 1.5 and d.max() <= 12
    # a margin shrinks the face towards the centre: the centre pixel is the same point
    out_m = _C.align_face(big, lm, size=size, margin=0.2)
    c = size // 2
    assert np.abs(out_m[c, c].astype(int) - out[c, c]).max() <= 3


# ---- resize and centre crop -------------------------------------------------------------

@pytest.mark.parametrize("shape,box,oh,ow,flip", [
    ((40, 50), (0, 0, 50, 40), 40, 50, False),     # identity
    ((40, 50), (5, 3, 30, 30), 45, 45, False),     # enlarge
    ((64, 64), (0, 0, 64, 64), 16, 16, False),     # shrink by 4: antialiased
    ((57, 61), (7.5, 2.25, 40.5, 50), 23, 19, True),  # fractional box, flipped
])
def test_resize_matches_numpy(shape, box, oh, ow, flip, rng):
    img = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    out = _C.resize(img, oh, ow, box=box, flip=flip)
    d = np.abs(out.astype(int) - ref_resize(img, box, oh, ow, flip))
    assert d.max() <= 1


def test_center_crop_resize(rng):
    img = rng.integers(0, 256, (100, 160, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_C.center_crop_resize(img, 100), img[:, 30:130])
    tall = np.ascontiguousarray(img.transpose(1, 0, 2))
    np.testing.assert_array_equal(_C.center_crop_resize(tall, 100), tall[30:130])
    small = _C.center_crop_resize(img, 25)
    d = np.abs(small.astype(int) - ref_resize(img, (30, 0, 100, 100), 25, 25))
    assert d.max() <= 1
    # shrinking a 1-pixel checkerboard by 4 gives flat grey (antialiasing), not aliasing
    cb = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, -1)
    assert np.abs(_C.center_crop_resize(cb, 16).astype(int) - 127.5).max() <= 1
    assert _C.center_crop_resize(np.full((7, 9, 3), 99, np.uint8), 50).min() == 99


# ---- bad input and references -----------------------------------------------------------

def test_bad_input():
    img = np.zeros((10, 12, 3), np.uint8)
    lm = _C.template_points(10)
    M = np.array([[1.0, 0, 0], [0, 1, 0]])
    with pytest.raises(TypeError, match="img must have dtype uint8"):
        _C.align_face(img.astype(np.float32), lm)
    with pytest.raises(ValueError, match="img: dimension 2 must be 3"):
        _C.center_crop_resize(np.zeros((10, 12, 4), np.uint8), 8)
    with pytest.raises(ValueError, match="img must have 3 dimensions"):
        _C.center_crop_resize(np.zeros((10, 12), np.uint8), 8)
    with pytest.raises(ValueError, match="landmarks: dimension 0 must be 5"):
        _C.align_face(img, lm[:4].copy())
    with pytest.raises(ValueError, match="landmarks: dimension 1 must be 2"):
        _C.align_face(img, np.zeros((5, 3), np.float32))
    with pytest.raises(TypeError, match="landmarks must have dtype float32"):
        _C.align_face(img, lm.astype(np.float64))
    for bad in (0, -3):
        with pytest.raises(ValueError, match="size"):
            _C.align_face(img, lm, size=bad)
        with pytest.raises(ValueError, match="size"):
            _C.center_crop_resize(img, bad)
        with pytest.raises(ValueError, match="size"):
            _C.template_points(bad)
        with pytest.raises(ValueError, match="out_h"):
            _C.warp_affine(img, M, bad, 5)
    with pytest.raises(ValueError, match="margin"):
        _C.template_points(10, margin=-0.1)
    with pytest.raises(ValueError, match="border must be"):
        _C.warp_affine(img, M, 5, 5, border="wrap")
    with pytest.raises(ValueError, match="singular"):
        _C.warp_affine(img, np.zeros((2, 3)), 5, 5)
    with pytest.raises(ValueError, match="M: dimension 1 must be 3"):
        _C.warp_affine(img, np.eye(2), 5, 5)
    with pytest.raises(TypeError, match="M must have dtype float64"):
        _C.warp_affine(img, M.astype(np.float32), 5, 5)
    with pytest.raises(ValueError, match="coincide"):
        _C.similarity_transform(np.ones((5, 2), np.float32), lm)
    with pytest.raises(ValueError, match="same shape"):
        _C.similarity_transform(lm, lm[:4].copy())
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.center_crop_resize(np.zeros((10, 24, 3), np.uint8)[:, ::2], 8)
    with pytest.raises(ValueError, match="not finite"):
        _C.similarity_transform(np.full((5, 2), np.nan, np.float32), lm)
    with pytest.raises(ValueError, match="box"):
        _C.resize(img, 5, 5, box=(0, 0, 20, 5))


def test_no_reference_leaks(rng):
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    lm = _C.template_points(16)
    M = np.array([[1.0, 0, 0], [0, 1, 0]])
    assert_no_leak(_C.similarity_transform, lm, lm)
    assert_no_leak(_C.warp_affine, img, M, 8, 8)
    assert_no_leak(_C.align_face, img, lm, 8)
    assert_no_leak(_C.center_crop_resize, img, 8)
