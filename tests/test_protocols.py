"""Protocols (GLAE IV-A): splits, subject-exclusive splits, duplicate removal, balanced subset, k-fold."""
import numpy as np
import pytest

from glae.data import PROTOCOLS, age_classes, balanced_subset, deduplicate, kfold, random_split, split, subject_split


def assert_partition(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n  # disjoint and complete
    assert allidx.min(initial=0) >= 0 and allidx.max(initial=-1) < n
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)


@pytest.mark.parametrize("n", [0, 1, 101, 1000])
def test_random_split(n):
    tr, te = random_split(n, (0.8, 0.2), seed=3)
    assert_partition([tr, te], n)
    assert len(tr) == round(0.8 * n)
    tr2, te2 = random_split(np.zeros(n), (4, 1), seed=3)  # MIVIA 4:1 == 80/20; arrays give n
    np.testing.assert_array_equal(tr, tr2)
    assert not np.array_equal(random_split(1000, seed=4)[0], random_split(1000, seed=3)[0])
    a, b, c = random_split(n, (2, 1, 1), seed=0)
    assert_partition([a, b, c], n)


def test_split_errors():
    with pytest.raises(ValueError, match="ratios"):
        random_split(10, (1, -1))
    with pytest.raises(ValueError, match="ratios"):
        random_split(10, (0, 0))
    with pytest.raises(ValueError, match="unknown protocol"):
        split("morph", 10)


def test_subject_split_exclusive():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 120, 3000)
    ids[:40] = -1  # unknown identities: each its own subject
    tr, te = subject_split(ids, (0.8, 0.2), seed=1)
    assert_partition([tr, te], 3000)
    known_tr, known_te = set(ids[tr][ids[tr] >= 0]), set(ids[te][ids[te] >= 0])
    assert not known_tr & known_te
    assert abs(len(te) / 3000 - 0.2) < 0.03  # whole subjects, close to the ratio
    np.testing.assert_array_equal(subject_split(ids, (0.8, 0.2), seed=1)[1], te)
    tr2, te2 = split("morph-random-80-20", 3000, seed=1, identities=ids)
    np.testing.assert_array_equal(te2, te)
    assert set(PROTOCOLS) >= {"morph-random-80-20", "mivia-4-1"}


def test_deduplicate():
    # hashes as (N, 32) bytes like PackedDataset.hashes
    keys = [0, 1, 1, 2, 2, 2, 3, 4, 4]
    ages = [10, 20, 20, 30, 31, 30, 40, 50, 50]
    h = np.zeros((9, 32), np.uint8)
    h[:, 0] = keys
    kept, rep = deduplicate(h, ages)
    # group 1 same age: keep first copy (1); group 2 ages disagree: drop all; group 4: keep 7
    np.testing.assert_array_equal(kept, [0, 1, 6, 7])
    assert rep.n_groups == 3 and sorted(rep.dropped_copies) == [2, 8]
    assert sorted(rep.dropped_conflicts) == [3, 4, 5]
    assert rep.n_in == 9 and rep.n_kept == 4
    kept_tol, _ = deduplicate(h, ages, tol=1.0)  # within a year counts as agreeing
    np.testing.assert_array_equal(kept_tol, [0, 1, 3, 6, 7])
    kept_str, _ = deduplicate(["a", "b", "a"], [1, 2, 1])  # any hashable keys
    np.testing.assert_array_equal(kept_str, [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        deduplicate(h, ages[:3])


def test_balanced_subset():
    rng = np.random.default_rng(0)
    ages = np.concatenate([np.full(50, 20.2), np.full(12, 30.0), np.full(4, 80.0), rng.uniform(0, 100, 30)])
    pool = np.arange(0, len(ages), 2)  # draw only from a "test" part, as MIVIA-LT does
    idx = balanced_subset(ages, 5, seed=2, indices=pool)
    assert set(idx) <= set(pool) and len(np.unique(idx)) == len(idx)
    cls, counts = np.unique(age_classes(ages[idx]), return_counts=True)
    assert np.all(counts == 5) and set(cls) == {20, 30}  # 80 has 2 in the pool: skipped
    np.testing.assert_array_equal(idx, balanced_subset(ages, 5, seed=2, indices=pool))
    all_ = balanced_subset(ages, 5, seed=2, indices=pool, short="all")
    assert np.sum(age_classes(ages[all_]) == 80) == 2
    with pytest.raises(ValueError, match="fewer than n_per_age"):
        balanced_subset(ages, 5, indices=pool, short="raise")
    # half up, like the metrics (half to even would give 50 for 50.5), clipped to 0..100
    assert list(age_classes([-3, 0.4, 50.5, 51.5, 130])) == [0, 0, 51, 52, 100]


@pytest.mark.parametrize("with_ids", [False, True])
def test_kfold(with_ids):
    n = 500
    ids = np.random.default_rng(1).integers(0, 60, n) if with_ids else None
    folds = kfold(n, 5, seed=0, identities=ids)
    assert len(folds) == 5
    assert_partition([te for _, te in folds], n)
    for tr, te in folds:
        assert_partition([tr, te], n)
        if with_ids:
            assert not set(ids[tr]) & set(ids[te])
        else:
            assert len(te) == 100
    with pytest.raises(ValueError, match="k must be"):
        kfold(10, 1)
