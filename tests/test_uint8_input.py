"""uint8 batches: the Loader hands over the augmented pixels (dtype='uint8') and the model
normalises them on its device (normalise_u8). Every check is bitwise: the uint8 path must
give the float32 path's numbers exactly, only with a quarter of the bytes to move."""
import numpy as np
import pytest

from glae import _C

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def reference(u, norm):
    """The normalisation in NumPy: one float32 multiply, then one float32 add."""
    if norm == "glae":
        scale, offset = np.float32(1 / 128), np.float32(-127.5 / 128)
    elif norm == "imagenet":
        scale, offset = (1 / (255 * STD)).astype(np.float32), (-MEAN / STD).astype(np.float32)
    else:
        scale, offset = np.float32(1), np.float32(0)
    return (u.astype(np.float32) * scale).astype(np.float32) + offset


@pytest.mark.parametrize("norm", ["glae", "imagenet", "none"])
def test_normalise_u8_matches_numpy(rng, norm):
    u = rng.integers(0, 256, (3, 17, 13, 3), dtype=np.uint8)  # 1989 values: not a multiple of 48
    got = _C.normalise_u8(u, norm=norm)
    assert got.dtype == np.float32 and got.shape == u.shape
    np.testing.assert_array_equal(got, reference(u, norm))
    every = np.arange(256, dtype=np.uint8).repeat(3).reshape(256, 3)  # every value, every channel
    np.testing.assert_array_equal(_C.normalise_u8(every, norm=norm), reference(every, norm))


def test_normalise_u8_bad_input(rng):
    with pytest.raises(TypeError, match="uint8"):
        _C.normalise_u8(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="last dimension must be 3"):
        _C.normalise_u8(np.zeros((2, 4), np.uint8))
    with pytest.raises(ValueError, match="norm must be"):
        _C.normalise_u8(np.zeros((2, 3), np.uint8), norm="unit")


CONFIGS = [dict(), dict(randaugment=False), dict(jitter=False, randaugment=False),
           dict(norm="imagenet"), dict(crop=False, flip=0.0, jitter=False, randaugment=False,
                                       norm="none")]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_uint8_loader_is_the_float_loader_before_normalising(rng, cfg):
    """Each augmentation path (jitter with the fused normalisation, RandAugment, neither)
    gives pixels whose normalisation is the float loader's batch, bit for bit."""
    images = rng.integers(0, 256, (30, 36, 44, 3), dtype=np.uint8)
    ages = rng.uniform(0, 90, 30).astype(np.float32)
    order = rng.permutation(30).astype(np.int64)
    args = (images, ages, None, order, 8)
    kw = dict(out_size=32, seed=5, epoch=2, threads=2, **cfg)
    f = list(_C.Loader(*args, **kw))
    u = list(_C.Loader(*args, dtype="uint8", **kw))
    assert len(f) == len(u) == 4
    for (x, a, s), (p, b, t) in zip(f, u):
        assert p.dtype == np.uint8 and p.shape == x.shape
        np.testing.assert_array_equal(_C.normalise_u8(p, norm=cfg.get("norm", "glae")), x)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(s, t)
    # the same batches from 1 thread, and a numpy dtype spelling
    one = list(_C.Loader(*args, dtype=np.uint8, **dict(kw, threads=1)))
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(u, one))


def test_loader_dtype_checked(rng):
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    order = np.arange(4, dtype=np.int64)
    with pytest.raises(ValueError, match="dtype must be float32"):
        _C.Loader(images, None, None, order, 2, out_size=8, dtype="float64")
    with pytest.raises(TypeError):
        _C.Loader(images, None, None, order, 2, out_size=8, dtype="no such type")


def model(seed=2):
    return _C.Model("resnet18", "fr+pa", input_size=64, proj_width=32, seed=seed)


@pytest.mark.parametrize("norm", ["glae", "imagenet"])
def test_model_uint8_input_is_the_float_input(rng, norm):
    """train_step, train_step_async, forward and predict on uint8 pixels give what they
    give on the host-normalised float32 batch, bitwise."""
    u = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    x = _C.normalise_u8(u, norm=norm)
    ages = rng.uniform(0, 90, 3).astype(np.float32)
    sigma = rng.uniform(1, 3, 3).astype(np.float32)
    a, b, c = model(), model(), model()
    la = a.train_step(x, ages, sigma)
    assert b.train_step(u, ages, sigma, norm=norm) == la
    np.testing.assert_array_equal(b.grads, a.grads)
    np.testing.assert_array_equal(b.buffers, a.buffers)  # BN running statistics
    c.train_step_async(u, ages, sigma, norm=norm)
    assert c.async_losses() == la
    np.testing.assert_array_equal(c.grads, a.grads)
    for p, q in zip(a.predict(x, return_upsilon=True), b.predict(u, norm=norm, return_upsilon=True)):
        np.testing.assert_array_equal(q, p)
    fa, fb = a.forward(x), b.forward(u, norm=norm)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fb[k], fa[k])


def test_model_uint8_needs_its_norm(rng):
    """The model does not know how its data was normalised: uint8 input without norm is an
    error rather than a silent guess (glae.Model passes Config.normalization)."""
    u = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    m = model()
    for call in (lambda: m.predict(u), lambda: m.forward(u), lambda: m.train_step_async(
            u, np.ones(2, np.float32)), lambda: m.train_step(u, np.ones(2, np.float32), norm=None)):
        with pytest.raises(ValueError, match="give norm="):
            call()
    np.testing.assert_array_equal(m.predict(u, norm="glae")[0],
                                  m.predict(_C.normalise_u8(u, norm=None))[0])  # None: 'glae'


def test_model_input_errors(rng):
    m = model()
    u = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    x = _C.normalise_u8(u)
    ages = np.ones(2, np.float32)
    with pytest.raises(ValueError, match="norm must be"):
        m.train_step(u, ages, norm="unit")
    with pytest.raises(ValueError, match="norm applies to uint8"):
        m.predict(x, norm="glae")
    with pytest.raises(TypeError, match="float32"):
        m.train_step(u.astype(np.int16), ages)
    with pytest.raises(ValueError, match="dimension 3"):
        m.forward(np.zeros((2, 64, 64, 4), np.uint8))


@pytest.mark.parametrize("cfg", CONFIGS[:2] + [dict(crop=False, flip=0.0, jitter=False,
                                                     randaugment=False)])
def test_uint8_augment_batch_is_the_float_one_before_normalising(rng, cfg):
    images = rng.integers(0, 256, (6, 40, 30, 3), dtype=np.uint8)
    idx = np.array([3, 1, 3, 0, 5], np.int64)  # a repeat gets a fresh augmentation in both
    x = _C.augment_batch(images, idx, 24, 7, 1, **cfg)
    u = _C.augment_batch(images, idx, 24, 7, 1, dtype="uint8", **cfg)
    assert u.dtype == np.uint8 and u.shape == x.shape == (5, 24, 24, 3)
    np.testing.assert_array_equal(_C.normalise_u8(u, norm=cfg.get("norm", "glae")), x)


@pytest.mark.parametrize("normalization", ["glae", "imagenet"])
def test_public_predict_sends_pixels(rng, normalization):
    """glae.Model.predict hands the model uint8 pixels (preprocess(dtype=uint8)): the same
    ages, bitwise, as the normalised float32 batch of preprocess() through core.predict."""
    import glae

    m = glae.Model(backbone="resnet18", head="fr+pa", image_size=64, proj_width=32,
                   normalization=normalization, seed=1)
    faces = rng.integers(0, 256, (5, 80, 72, 3), dtype=np.uint8)  # not square: centre crop
    x = m.preprocess(faces)
    assert x.dtype == np.float32 and m.preprocess(faces, dtype=np.uint8).dtype == np.uint8
    want = m.core.predict(x, route="vanilla", flip=True)[0]
    np.testing.assert_array_equal(m.predict(faces), want)
    # batches of 2 (a GEMM's rounding may depend on the batch size: compare like with like)
    want2 = np.concatenate([m.core.predict(x[i:i + 2], route="vanilla", flip=True)[0]
                            for i in range(0, len(x), 2)])
    np.testing.assert_array_equal(m.predict(list(faces), batch_size=2), want2)
