"""Augmentations: determinism keyed by (seed, epoch, index), each op against a NumPy
reference or its defining property, normalisations, configuration and bad input."""
import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak, assert_unmodified

OFF = dict(crop=False, flip=0.0, jitter=False, randaugment=False)


@pytest.fixture
def images(rng):
    return rng.integers(0, 256, (12, 40, 40, 3), dtype=np.uint8)


def smooth(rng, h=48, w=48):
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([100 + 60 * np.sin(x / 7 + c) * np.cos(y / 9 - c) for c in range(3)], -1)
    return np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


# ---- determinism ------------------------------------------------------------------------

def test_same_output_for_any_thread_count(images):
    idx = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], np.int64)
    a = _C.augment_batch(images, idx, 32, 7, 2, threads=1)
    b = _C.augment_batch(images, idx, 32, 7, 2, threads=2)
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all() and a.shape == (11, 32, 32, 3) and a.dtype == np.float32


def test_keyed_by_seed_epoch_index(images):
    full = _C.augment_batch(images, np.array([3, 5, 7], np.int64), 32, 11, 4)
    one = _C.augment_batch(images, np.array([5], np.int64), 32, 11, 4)
    np.testing.assert_array_equal(full[1], one[0])  # batch composition does not matter
    assert not np.array_equal(one, _C.augment_batch(images, np.array([5], np.int64), 32, 11, 5))
    assert not np.array_equal(one, _C.augment_batch(images, np.array([5], np.int64), 32, 12, 4))
    # a repeated index (class-balanced oversampling) gets a fresh draw for each occurrence
    rep = _C.augment_batch(images, np.array([5, 5], np.int64), 32, 11, 4)
    np.testing.assert_array_equal(rep[0], one[0])
    assert not np.array_equal(rep[0], rep[1])


def test_memmap_input(images, tmp_path):
    path = tmp_path / "packed.u8"
    images.tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=images.shape)
    idx = np.arange(12, dtype=np.int64)
    np.testing.assert_array_equal(_C.augment_batch(mm, idx, 24, 1, 0), _C.augment_batch(images, idx, 24, 1, 0))


# ---- flip, crop, normalisation ----------------------------------------------------------

def test_flip_really_flips(images):
    idx = np.arange(12, dtype=np.int64)
    cfg = dict(OFF, norm="none")
    plain = _C.augment_batch(images, idx, 40, 0, 0, **cfg)
    np.testing.assert_array_equal(plain, images.astype(np.float32))
    flipped = _C.augment_batch(images, idx, 40, 0, 0, **dict(cfg, flip=1.0))
    np.testing.assert_array_equal(flipped, images[:, :, ::-1].astype(np.float32))
    half = _C.augment_batch(images[:1], np.zeros(200, np.int64), 40, 0, 0, **dict(cfg, flip=0.5))
    n_flip = sum(np.array_equal(h, flipped[0]) for h in half)
    assert 70 < n_flip < 130


def test_normalisations_exact(images):
    idx = np.array([0, 4], np.int64)
    x = images[idx].astype(np.float64)
    g = _C.augment_batch(images, idx, 40, 0, 0, **dict(OFF, norm="glae"))
    np.testing.assert_array_equal(g, ((x - 127.5) / 128).astype(np.float32))
    m = _C.augment_batch(images, idx, 40, 0, 0, **dict(OFF, norm="imagenet"))
    ref = (x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(m, ref, rtol=1e-6, atol=1e-6)
    # default is GLAE's normalisation
    np.testing.assert_array_equal(_C.augment_batch(images, idx, 40, 0, 0, **OFF), g)


def test_random_resized_crop(images, rng):
    idx = np.arange(12, dtype=np.int64)
    cfg = dict(OFF, crop=True, norm="none")
    # the whole image at aspect 1 is the identity
    same = _C.augment_batch(images, idx, 40, 3, 0, **dict(cfg, scale=(1.0, 1.0), ratio=(1.0, 1.0)))
    np.testing.assert_array_equal(same, images.astype(np.float32))
    # a crop of a 2x2-block image by half its side is the block pattern enlarged (a zoom)
    zoomed = _C.augment_batch(images, idx, 40, 3, 0, **dict(cfg, scale=(0.25, 0.25), ratio=(1.0, 1.0)))
    assert not np.array_equal(zoomed, same)
    flat = np.full((2, 30, 30, 3), 77, np.uint8)
    out = _C.augment_batch(flat, np.array([0, 1], np.int64), 20, 3, 0, **cfg)
    assert (out == 77).all()


def test_defaults():
    d = _C.augment_defaults()
    assert d["scale"] == pytest.approx((0.8, 1.0)) and d["ratio"] == pytest.approx((0.75, 4 / 3))
    assert d["flip"] == 0.5 and d["ra_n"] == 2 and d["ra_m"] == 9 and d["ra_bins"] == 31
    assert d["norm"] == "glae" and d["randaugment"] and d["crop"]


# ---- single ops -------------------------------------------------------------------------

def op(img, name, p=0.0):
    return assert_unmodified(lambda a: _C.augment_op(a, name, p), img)


def test_enhance_ops(rng):
    img = smooth(rng)
    f = img.astype(np.float64)
    for fac in (0.6, 1.5):
        np.testing.assert_array_equal(op(img, "brightness", fac), np.clip(np.floor(f * fac + 0.5), 0, 255))
    assert op(img, "brightness", 1.3).mean() > img.mean() > op(img, "brightness", 0.7).mean()
    assert op(img, "contrast", 0.5).std() < img.std() < op(img, "contrast", 1.5).std()
    gray = (0.2989 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]).mean()
    assert np.abs(op(img, "contrast", 0.0).astype(float) - gray).max() <= 0.5
    g0 = op(img, "color", 0.0)
    assert (np.ptp(g0.astype(int), axis=-1) <= 1).all()  # grey
    for name in ("brightness", "contrast", "color", "sharpness"):
        np.testing.assert_array_equal(op(img, name, 1.0), img)
    for name in ("identity",):
        np.testing.assert_array_equal(op(img, name), img)
    # sharpness: border kept, interior moves away from the blur
    sh = op(img, "sharpness", 2.0)
    np.testing.assert_array_equal(sh[0], img[0])
    assert np.abs(sh.astype(int) - img).sum() > 0


def test_hue(rng):
    px = lambda *c: np.array(c, np.uint8).reshape(1, 1, 3)
    np.testing.assert_array_equal(op(px(255, 0, 0), "hue", 0.5), px(0, 255, 255))
    np.testing.assert_array_equal(op(px(255, 0, 0), "hue", 1 / 3), px(0, 255, 0))
    np.testing.assert_array_equal(op(px(200, 100, 50), "hue", -1 / 3), px(100, 50, 200))
    img = smooth(rng)
    np.testing.assert_array_equal(op(img, "hue", 0.0), img)
    h = op(img, "hue", 0.2).astype(int)
    np.testing.assert_array_equal(h.max(-1), img.max(-1))  # V kept
    assert np.abs((h.max(-1) - h.min(-1)) - (img.max(-1).astype(int) - img.min(-1))).max() <= 1  # chroma kept


def test_pointwise_ops(rng):
    img = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(op(img, "solarize", 128), np.where(img >= 128, 255 - img, img))
    np.testing.assert_array_equal(op(img, "posterize", 4), img & 0xF0)
    np.testing.assert_array_equal(op(img, "posterize", 8), img)
    np.testing.assert_array_equal(op(img, "flip"), img[:, ::-1])
    low = (img // 4 + 40).astype(np.uint8)
    ac = op(low, "autocontrast")
    for c in range(3):
        lo, hi = int(low[..., c].min()), int(low[..., c].max())
        np.testing.assert_array_equal(ac[..., c], np.clip(np.floor((low[..., c].astype(float) - lo) * 255 / (hi - lo) + 0.5), 0, 255))


def test_equalize_matches_pil_algorithm(rng):
    img = np.clip(rng.normal(100, 20, (30, 30, 3)), 0, 255).astype(np.uint8)
    out = op(img, "equalize")
    for c in range(3):
        ch = img[..., c]
        hist = np.bincount(ch.ravel(), minlength=256)
        last = np.nonzero(hist)[0][-1]
        step = (hist.sum() - hist[last]) // 255
        lut = np.concatenate([[0], (np.cumsum(hist) + step // 2) // step])[:256]
        np.testing.assert_array_equal(out[..., c], np.clip(lut, 0, 255)[ch])
    assert out.std() > img.std()


def test_geometric_ops(rng):
    img = rng.integers(1, 256, (21, 21, 3), dtype=np.uint8)
    np.testing.assert_array_equal(op(img, "rotate", 90), np.rot90(img, 1))   # counter-clockwise
    np.testing.assert_array_equal(op(img, "rotate", -90), np.rot90(img, -1))
    t = op(img, "translate_x", 5)
    np.testing.assert_array_equal(t[:, 5:], img[:, :-5])
    assert (t[:, :5] == 0).all()
    t = op(img, "translate_y", -3)
    np.testing.assert_array_equal(t[:-3], img[3:])
    assert (t[-3:] == 0).all()
    s = op(img, "shear_x", 0.5)  # output (x, y) samples input (x + 0.5 y, y), nearest
    ys, xs = np.mgrid[0:21, 0:21]
    sx = np.floor(xs + 0.5 * ys + 0.5).astype(int)
    inside = sx < 21
    np.testing.assert_array_equal(s[inside], img[ys[inside], sx[inside]])
    assert (s[~inside] == 0).all()
    s = op(img, "shear_y", 0.25)
    sy = np.floor(ys + 0.25 * xs + 0.5).astype(int)
    inside = sy < 21
    np.testing.assert_array_equal(s[inside], img[sy[inside], xs[inside]])


def test_randaugment_magnitudes():
    # torchvision's ranges at bin 9 of 31 on a 224 x 224 image
    want = {"rotate": (9.0, True), "shear_x": (0.09, True), "shear_y": (0.09, True),
            "translate_x": (30.0, True), "translate_y": (30.0, True), "brightness": (0.27, True),
            "color": (0.27, True), "contrast": (0.27, True), "sharpness": (0.27, True),
            "posterize": (7.0, False), "solarize": (178.5, False), "autocontrast": (0.0, False),
            "equalize": (0.0, False), "identity": (0.0, False)}
    for name, (v, signed) in want.items():
        got = _C.randaug_magnitude(name, 9)
        assert got[0] == pytest.approx(v) and got[1] == signed, name
    assert _C.randaug_magnitude("posterize", 30)[0] == 4.0
    assert _C.randaug_magnitude("solarize", 0)[0] == 255.0


def test_randaugment_and_jitter_change_images(images):
    idx = np.arange(12, dtype=np.int64)
    base = _C.augment_batch(images, idx, 40, 5, 0, **OFF)
    ra = _C.augment_batch(images, idx, 40, 5, 0, **dict(OFF, randaugment=True))
    jit = _C.augment_batch(images, idx, 40, 5, 0, **dict(OFF, jitter=True))
    assert sum(not np.array_equal(a, b) for a, b in zip(ra, base)) >= 8
    assert sum(not np.array_equal(a, b) for a, b in zip(jit, base)) >= 11
    only_b = _C.augment_batch(images, idx, 40, 5, 0, **dict(OFF, jitter=True, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0))
    ratio = (only_b + 127.5 / 128).mean(axis=(1, 2, 3)) / (base + 127.5 / 128).mean(axis=(1, 2, 3))
    assert 0.55 < ratio.min() and ratio.max() < 1.45 and ratio.std() > 0.01


def test_contrast_uses_whole_image_mean(rng):
    # Colour jitter runs in chunks of 2,048 pixels (two passes around contrast); 70 x 70 =
    # 4,900 pixels spans chunks and a tail, and the image is dark on top and bright below, so
    # a mean taken over one chunk instead of the image would show as a large residual.
    img = smooth(rng, 70, 70).astype(np.int32)
    img[35:] += 60
    img = np.clip(img, 0, 255).astype(np.uint8)[None]
    cfg = dict(OFF, jitter=True, brightness=0.0, contrast=0.4, saturation=0.0, hue=0.0, norm="none")
    x = img[0].astype(np.float64)
    m = (0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]).mean()
    checked = 0
    for epoch in range(12):
        out = _C.augment_batch(img, np.zeros(1, np.int64), 70, 3, epoch, **cfg)[0].astype(np.float64)
        ok = (out > 0) & (out < 255)
        f = ((out - m) * (x - m))[ok].sum() / ((x - m) ** 2)[ok].sum()
        if abs(1 - f) < 0.1:
            continue
        checked += 1
        assert np.abs(out - (f * x + (1 - f) * m))[ok].max() <= 0.55, (epoch, f)
    assert checked >= 4


# ---- configuration and bad input --------------------------------------------------------

def test_config_dict_and_kwargs(images):
    idx = np.arange(3, dtype=np.int64)
    a = _C.augment_batch(images, idx, 24, 1, 0, {"hue": 0.0, "ra_m": 5})
    b = _C.augment_batch(images, idx, 24, 1, 0, config={"hue": 0.0}, ra_m=5)
    np.testing.assert_array_equal(a, b)
    c = _C.augment_batch(images=images, indices=idx, out_size=24, seed=1, epoch=0, hue=0.0, ra_m=5)
    np.testing.assert_array_equal(a, c)
    # the names glae/config.py uses are aliases
    d = _C.augment_batch(images, idx, 24, 1, 0, normalization="imagenet", color_jitter=False,
                         crop_scale=(0.5, 0.9), randaugment_n=1, randaugment_m=3, flip=True)
    e = _C.augment_batch(images, idx, 24, 1, 0, norm="imagenet", jitter=False, scale=(0.5, 0.9),
                         ra_n=1, ra_m=3, flip=0.5)
    np.testing.assert_array_equal(d, e)


def test_bad_input(images):
    idx = np.arange(3, dtype=np.int64)
    with pytest.raises(TypeError, match="images must have dtype uint8"):
        _C.augment_batch(images.astype(np.float32), idx, 24, 0, 0)
    with pytest.raises(ValueError, match="images: dimension 3 must be 3"):
        _C.augment_batch(np.zeros((2, 8, 8, 4), np.uint8), idx, 24, 0, 0)
    with pytest.raises(ValueError, match="images must have 4 dimensions"):
        _C.augment_batch(images[0], idx, 24, 0, 0)
    with pytest.raises(TypeError, match="indices must have dtype int64"):
        _C.augment_batch(images, idx.astype(np.int32), 24, 0, 0)
    with pytest.raises(ValueError, match="index 12 at position 1 outside"):
        _C.augment_batch(images, np.array([0, 12], np.int64), 24, 0, 0)
    with pytest.raises(ValueError, match="index -1"):
        _C.augment_batch(images, np.array([-1], np.int64), 24, 0, 0)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="out_size"):
            _C.augment_batch(images, idx, bad, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        _C.augment_batch(images, idx, 24, -1, 0)
    with pytest.raises(ValueError, match="epoch"):
        _C.augment_batch(images, idx, 24, 0, -1)
    with pytest.raises(ValueError, match="unknown key 'rotate'"):
        _C.augment_batch(images, idx, 24, 0, 0, rotate=3)
    with pytest.raises(ValueError, match="scale"):
        _C.augment_batch(images, idx, 24, 0, 0, scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="hue"):
        _C.augment_batch(images, idx, 24, 0, 0, hue=0.7)
    with pytest.raises(ValueError, match="ra_m"):
        _C.augment_batch(images, idx, 24, 0, 0, ra_m=31)
    with pytest.raises(ValueError, match="norm"):
        _C.augment_batch(images, idx, 24, 0, 0, norm="unit")
    with pytest.raises(TypeError, match="scale must be a pair"):
        _C.augment_batch(images, idx, 24, 0, 0, scale=0.5)
    with pytest.raises(TypeError, match="config must be a dict"):
        _C.augment_batch(images, idx, 24, 0, 0, [1])
    with pytest.raises(TypeError, match="multiple values"):
        _C.augment_batch(images, idx, 24, 0, 0, seed=3)
    with pytest.raises(ValueError, match="op must be one of"):
        _C.augment_op(images[0], "blur", 1.0)
    with pytest.raises(ValueError, match="posterize"):
        _C.augment_op(images[0], "posterize", 9)
    with pytest.raises(ValueError, match="hue"):
        _C.augment_op(images[0], "hue", 0.6)
    assert _C.augment_batch(images, np.zeros(0, np.int64), 24, 0, 0).shape == (0, 24, 24, 3)


def test_no_reference_leaks(images):
    idx = np.arange(2, dtype=np.int64)
    assert_no_leak(_C.augment_batch, images, idx, 16, 0, 0, n=50)
    assert_no_leak(_C.augment_op, images[0], "rotate", 10.0, n=50)
