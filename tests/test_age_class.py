"""The whole-year class of an age (core/age.h, _C.age_class): one rule, half up, for the
metrics, the training-age histogram, the sampler's labels, the shots, the plots and the
protocols. Half-year ages are where a second rule (NumPy's half-to-even rint) would show."""
import numpy as np
import pytest

from glae import _C
from glae import metrics as M
from glae.config import Config
from glae.data import age_classes
from glae.model import Model
from glae.train import Dataset, Trainer

from helpers import assert_no_leak, assert_unmodified

HALF = np.array([0.5, 1.5, 2.5, 20.5], np.float32)
HALF_CLASSES = [1, 2, 3, 21]  # half up; np.rint would give 0, 2, 2, 20


def ref_class(ages, num_classes):
    """Independent reference: floor(a + 0.5) on the float32 value, clipped."""
    a = np.asarray(ages).astype(np.float32).astype(np.float64)
    return np.clip(np.floor(a + 0.5), 0, num_classes - 1).astype(np.int64)


def test_against_numpy_reference():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.uniform(-5, 130, 5000), np.arange(-3, 120) + 0.5,
                        np.arange(0, 110), [0.49999997, 0.5, 99.5, 100.49999, 1e30, -1e30]])
    for k in (1, 2, 101, 1000):
        got = M.age_class(a, k)
        assert got.dtype == np.int64 and got.shape == a.shape
        np.testing.assert_array_equal(got, ref_class(a, k))
        np.testing.assert_array_equal(_C.age_class(a.astype(np.float32), num_classes=k), got)
    b = a[:-1].reshape(-1, 6)  # any shape is kept
    np.testing.assert_array_equal(M.age_class(b, 101), ref_class(b, 101))
    np.testing.assert_array_equal(M.age_class(a[:-2], None), ref_class(a[:-2], 2**62))
    assert M.age_class(20.5) == 21 and M.age_class(np.int32(7)) == 7
    # a float64 age is classed by its float32 value (what the C metrics see)
    near = np.nextafter(20.5, 0.0)  # 20.499999999999996 in float64, 20.5 in float32
    assert M.age_class(near) == 21 == ref_class([near], 101)[0]


def test_half_years_one_class_on_every_path(tmp_path):
    want = HALF_CLASSES
    assert _C.age_class(HALF).tolist() == want
    assert M.age_class(HALF).tolist() == want
    assert age_classes(HALF).tolist() == want  # protocols (balanced subsets)
    # the C metrics: per-age counts and routing groups
    _, count = M.per_age_mae(HALF, HALF, num_classes=101)
    assert np.flatnonzero(count).tolist() == want
    usage = M.routing_usage(HALF, np.zeros(4, np.int32), edges=[(c, c) for c in want])
    assert all(usage[f"{c}"]["count"] == 1 for c in want)
    # the sampler: float ages give the same draws as their classes
    np.testing.assert_array_equal(_C.sample_class_balanced(HALF, 4, 2, length=64),
                                  _C.sample_class_balanced(np.array(want, np.int64), 4, 2, length=64))
    # the trainer's labels and saved histogram
    images = np.zeros((4, 32, 32, 3), np.uint8)
    cfg = Config(image_size=32, batch_size=2, stage1_epochs=1, stage2_epochs=0)
    t = Trainer(Model.from_config(cfg), cfg, Dataset(images, HALF), None, progress=False, log=None)
    assert t.labels.tolist() == want
    hist = t.model.data_info["train_age_hist"]
    assert np.flatnonzero(hist).tolist() == want
    np.testing.assert_array_equal(t.model.train_ages, np.array(want, np.float32))


def test_plot_histogram_uses_the_rule():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from glae import plots
    import matplotlib.pyplot as plt

    y = np.array([10.0, 30.0], np.float32)
    fig = plots.per_age_mae({"v": (y, y)}, train_ages=np.repeat(HALF, [1, 2, 3, 4]))
    bars = [a for a in fig.axes if a.patches][0].patches
    heights = np.array([b.get_height() for b in bars])
    plt.close(fig)
    assert len(heights) == 101
    assert np.flatnonzero(heights).tolist() == HALF_CLASSES
    assert heights[HALF_CLASSES].tolist() == [1, 2, 3, 4]


def test_shot_mae_same_whichever_path_built_the_histogram():
    """Shots from the raw half-year training ages (the C metrics' histogram) and from the
    whole-year histogram the Trainer saves (Model.train_ages) agree; the old rint
    histogram puts 20.5 in 20 and would change which shot age 20 and 21 belong to."""
    train = np.repeat(np.array([20.5, 21.0, 30.0], np.float32), [150, 10, 40])
    y = np.array([20.0, 20.0, 21.0, 21.0, 30.0], np.float32)
    yhat = y + np.array([1.0, 3.0, 0.5, 1.5, 2.0], np.float32)
    raw = M.shot_mae(y, yhat, train)
    hist = np.bincount(M.age_class(train))  # what the Trainer saves
    whole = M.shot_mae(y, yhat, np.repeat(np.arange(len(hist), dtype=np.float32), hist))
    assert raw == whole
    assert raw["many"]["n_ages"] == 1 and raw["many"]["count"] == 2  # age 21: 160 images
    rint = np.bincount(np.rint(train).astype(np.int64))
    old = M.shot_mae(y, yhat, np.repeat(np.arange(len(rint), dtype=np.float32), rint))
    assert old != raw  # a second rule would move the shots


def test_binding_strict_checks():
    with pytest.raises(TypeError, match="ages must be a numpy.ndarray"):
        _C.age_class([1.0, 2.0])
    with pytest.raises(TypeError, match="ages must have dtype float32"):
        _C.age_class(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="ages must have 1 dimensions"):
        _C.age_class(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="ages must be C-contiguous"):
        _C.age_class(np.zeros(6, np.float32)[::2])
    with pytest.raises(ValueError, match=r"ages\[1\] is not a finite age: nan"):
        _C.age_class(np.array([3.0, np.nan], np.float32))
    with pytest.raises(ValueError, match=r"ages\[0\] is not a finite age: inf"):
        _C.age_class(np.array([np.inf], np.float32))
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        _C.age_class(HALF, 0)
    with pytest.raises(TypeError):
        _C.age_class(HALF, 2.5)
    with pytest.raises(ValueError, match="not a finite age"):
        M.age_class([1.0, np.nan])
    with pytest.raises(TypeError, match="ages must hold numbers"):
        M.age_class(["a"])
    with pytest.raises(TypeError, match="num_classes must be an integer or None"):
        M.age_class(HALF, 10.0)
    assert _C.age_class(np.zeros(0, np.float32)).shape == (0,)


def test_input_unmodified_and_no_leak():
    a = HALF.copy()
    assert_unmodified(lambda x: _C.age_class(x, 50), a)
    assert_no_leak(lambda x: _C.age_class(x, 50), a)
    assert_no_leak(lambda x: pytest.raises(ValueError, _C.age_class, x), np.array([np.nan], np.float32))
