"""Protocols (GLAE IV-A): splits, subject-exclusive splits, duplicate removal, balanced subset, k-fold."""
import numpy as np
import pytest

from glae import _C
from glae.data import PROTOCOLS, age_classes, balanced_subset, deduplicate, kfold, random_split, split, subject_split

from helpers import assert_no_leak
from test_core import KAT

# ---- an independent pure-Python Philox4x32-10 + Fisher-Yates (docs/data.md, "Protocols") ----

MASK = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # Salmon et al. 2011: the Philox4x32 multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # and the Weyl key increments
TAG = int.from_bytes(b"PRM1", "big")  # counter word b of the permutation's draws


def philox4x32_10(key, ctr):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0, p1 = PHILOX_M[0] * c0, PHILOX_M[1] * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK, (p0 >> 32) ^ c3 ^ k1, p0 & MASK
        k0, k1 = (k0 + PHILOX_W[0]) & MASK, (k1 + PHILOX_W[1]) & MASK
    return [c0, c1, c2, c3]


def words(seed, a, b, c):
    """The stream (seed; a, b, c): 32-bit words, the last counter word counting blocks."""
    key, d = (seed & MASK, seed >> 32), 0
    while True:
        yield from philox4x32_10(key, (a, b, c, d))
        d += 1


def below(w, n):
    """Uniform in [0, n): Lemire's multiply, rejecting the low words under 2^32 mod n."""
    if n <= 1:
        return 0
    m = next(w) * n
    if (m & MASK) < n:
        t = (2**32 - n) % n
        while (m & MASK) < t:
            m = next(w) * n
    return m >> 32


def ref_permutation(n, seed, stream):
    out = list(range(n))
    for i in range(n - 1, 0, -1):
        j = below(words(seed, stream, TAG, i), i + 1)
        out[i], out[j] = out[j], out[i]
    return out


def test_reference_philox_known_answers():
    for key, ctr, want in KAT:
        assert philox4x32_10(key, ctr) == want


@pytest.mark.parametrize("n,seed,stream", [(0, 0, 0), (1, 5, 0), (10, 0, 0), (10, 0, 1),
                                           (1000, 2**64 - 1, 7), (37, 12345678901234, 2**32 - 1)])
def test_rng_permutation_matches_reference(n, seed, stream):
    got = _C.rng_permutation(n, seed, stream)
    assert got.dtype == np.int64 and got.shape == (n,)
    assert got.tolist() == ref_permutation(n, seed, stream)
    np.testing.assert_array_equal(_C.rng_permutation(n, seed, stream=stream), got)


def test_rng_permutation_bad_arguments():
    with pytest.raises(ValueError, match="n must be >= 0"):
        _C.rng_permutation(-1, 0)
    with pytest.raises(ValueError, match="n must be <= 4294967295"):
        _C.rng_permutation(2**32, 0)
    with pytest.raises(ValueError, match="seed must be <= 18446744073709551615"):
        _C.rng_permutation(3, 2**64)
    with pytest.raises(ValueError, match="stream must be <= 4294967295"):
        _C.rng_permutation(3, 0, 2**32)
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        _C.rng_permutation(3, 1.0)
    with pytest.raises(TypeError, match="n must be an int, got bool"):
        _C.rng_permutation(True, 0)
    with pytest.raises(TypeError, match="seed must be an integer, got 1.5"):
        random_split(10, seed=1.5)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        kfold(10, 2, seed=-1)
    assert_no_leak(_C.rng_permutation, 50, 3, 1)
    assert_no_leak(lambda: pytest.raises(ValueError, _C.rng_permutation, -1, 0))


# random_split(20, (0.8, 0.2), seed=2024), from ref_permutation(20, 2024, 0) =
# [18, 14, 9, 17, 3, 19, 4, 7, 5, 15, 1, 0, 12, 11, 16, 10 | 6, 8, 2, 13], cut 16/4
SPLIT_2024 = ([0, 1, 3, 4, 5, 7, 9, 10, 11, 12, 14, 15, 16, 17, 18, 19], [2, 6, 8, 13])


def test_splits_are_the_engines_philox_permutation(monkeypatch):
    perm = ref_permutation(20, 2024, 0)
    assert (sorted(perm[:16]), sorted(perm[16:])) == SPLIT_2024
    tr, te = random_split(20, (0.8, 0.2), seed=2024)
    assert (tr.tolist(), te.tolist()) == SPLIT_2024
    tr2, te2 = random_split(np.zeros(20), (4, 1), seed=np.int64(2024))
    assert (tr2.tolist(), te2.tolist()) == SPLIT_2024  # two calls, any int type: one split
    # NumPy's generators are not used at all (their streams may change across versions)
    def no_numpy_rng(*a, **k):
        raise AssertionError("a protocol drew from numpy.random")
    monkeypatch.setattr(np.random, "default_rng", no_numpy_rng)
    monkeypatch.setattr(np.random, "permutation", no_numpy_rng)
    monkeypatch.setattr(np.random, "choice", no_numpy_rng)
    # kfold: random_split's permutation cut in k pieces
    perm = ref_permutation(23, 9, 0)
    for (tr, te), want in zip(kfold(23, 4, seed=9), np.array_split(np.array(perm), 4)):
        assert te.tolist() == sorted(want.tolist())
        assert tr.tolist() == sorted(set(range(23)) - set(want.tolist()))
    # subject_split: subjects in the order of stream 1; with one image each and equal
    # ratios they alternate between the two parts
    order = ref_permutation(12, 3, 1)
    tr, te = subject_split(np.arange(100, 112), (0.5, 0.5), seed=3)
    assert tr.tolist() == sorted(order[0::2]) and te.tolist() == sorted(order[1::2])
    # balanced_subset: one shuffle of the pool (stream 2), each age its first n in it
    ages = np.repeat([20.0, 30.0, 40.0], [6, 5, 2])
    pool = np.arange(13)[::-1].copy()
    shuffled = pool[ref_permutation(13, 11, 2)]
    want = [i for c in (20, 30) for i in [j for j in shuffled if ages[j] == c][:3]]
    got = balanced_subset(ages, 3, seed=11, indices=pool)
    assert got.tolist() == sorted(want)
    np.testing.assert_array_equal(balanced_subset(ages, 3, seed=11, indices=pool), got)


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
