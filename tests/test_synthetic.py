"""The synthetic stand-in data: deterministic, long-tailed ages, and learnable."""
import numpy as np
import pytest

from glae.data import PackedDataset, age_pmf, sample_ages, synthetic_faces, write_synthetic
from glae.data.synthetic import AGE_DECADES


def test_deterministic_and_shapes():
    a, ages = synthetic_faces(40, 32, seed=5)
    b, ages_b = synthetic_faces(40, 32, seed=5)
    assert a.shape == (40, 32, 32, 3) and a.dtype == np.uint8 and ages.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ages, ages_b)
    c, _ = synthetic_faces(40, 32, seed=6)
    assert not np.array_equal(a, c)
    big, _ = synthetic_faces(2, 224, seed=0)
    assert big.shape == (2, 224, 224, 3) and big.std() > 10  # not blank
    given = np.array([3, 40, 85], np.float32)
    _, g = synthetic_faces(3, 32, ages=given)
    np.testing.assert_array_equal(g, given)
    with pytest.raises(ValueError, match="ages has"):
        synthetic_faces(2, 32, ages=given)
    with pytest.raises(ValueError, match="size"):
        synthetic_faces(2, 8)


def test_age_histogram_long_tailed():
    p = age_pmf()
    assert p.shape == (101,) and abs(p.sum() - 1) < 1e-12 and np.all(p >= 0)
    decades = np.array([p[10 * d:10 * d + 10].sum() for d in range(10)] + [p[100]])
    want = np.array(AGE_DECADES, float) / sum(AGE_DECADES)
    assert np.abs(decades - want).max() < 0.02  # close to UTKFace's decade shares
    ages = sample_ages(20000, seed=0)
    assert ages.min() >= 0 and ages.max() <= 100 and np.all(ages == np.round(ages))
    share = lambda lo, hi: np.mean((ages >= lo) & (ages < hi))  # noqa: E731
    assert share(20, 40) > 0.4 and share(70, 101) < 0.08
    counts = np.bincount(ages.astype(int), minlength=101)
    assert counts[20:40].mean() > 10 * counts[80:].mean()  # head vs tail


def test_learnable_by_ridge():
    """Ridge regression on 8x8-downsampled pixels beats predicting the median by far."""
    def feats(im):
        x = im.reshape(len(im), 8, im.shape[1] // 8, 8, im.shape[2] // 8, 3).mean((2, 4))
        return x.reshape(len(im), -1) / 255.0

    tr, a = synthetic_faces(1200, 32, seed=0)
    te, b = synthetic_faces(400, 32, seed=1)
    X, Xt = feats(tr), feats(te)
    mu = X.mean(0)
    w = np.linalg.solve((X - mu).T @ (X - mu) + 1.0 * np.eye(X.shape[1]), (X - mu).T @ (a - a.mean()))
    mae = np.abs((Xt - mu) @ w + a.mean() - b).mean()
    base = np.abs(np.median(a) - b).mean()
    assert mae < 0.6 * base, (mae, base)


def test_write_synthetic(tmp_path):
    p = write_synthetic(tmp_path / "s.glae", n=20, size=32, seed=2)
    ds = PackedDataset(p)
    im, ages = synthetic_faces(20, 32, seed=2)
    np.testing.assert_array_equal(ds.images, im)
    np.testing.assert_array_equal(ds.ages, ages)
    assert ds.paths[3] == "synthetic:3" and np.all(ds.identities == -1)
    assert "not a benchmark" in ds.meta["note"]
