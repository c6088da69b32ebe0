"""Instance- and class-balanced samplers: exact properties, reproducibility from
(seed, epoch), and chi-square checks of uniformity."""
import math
from collections import Counter

import numpy as np
import pytest

import glae
from glae import _C

from helpers import assert_no_leak, assert_unmodified


def chi2_ok(counts, expected):
    """Pearson's statistic against a generous bound (mean k, sd sqrt(2k) for k degrees of
    freedom: 6 sd above the mean). The samplers are deterministic, so this never flakes;
    a biased sampler lands far above it."""
    counts = np.asarray(counts, np.float64)
    expected = np.broadcast_to(np.asarray(expected, np.float64), counts.shape)
    stat = float(np.sum((counts - expected) ** 2 / expected))
    k = counts.size - 1
    return stat < k + 6 * math.sqrt(2 * k), stat


# ---- instance-balanced -------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 2, 1000])
def test_permutation_every_index_once(n):
    idx = _C.sample_instance_balanced(n, 42, 3)
    assert idx.dtype == np.int64 and idx.shape == (n,)
    np.testing.assert_array_equal(np.sort(idx), np.arange(n))


def test_permutation_reproducible_and_varies():
    a = _C.sample_instance_balanced(500, 7, 0)
    np.testing.assert_array_equal(a, _C.sample_instance_balanced(500, 7, 0))
    assert not np.array_equal(a, _C.sample_instance_balanced(500, 7, 1))
    assert not np.array_equal(a, _C.sample_instance_balanced(500, 8, 0))
    assert not np.array_equal(a, np.arange(500))
    # large seeds and epochs are fine (seed: 64 bits, epoch: 32 bits)
    b = _C.sample_instance_balanced(10, 2**64 - 1, 2**32 - 1)
    np.testing.assert_array_equal(np.sort(b), np.arange(10))


def test_permutation_is_uniform():
    """All 4! orders of 4 items appear equally often over epochs."""
    epochs = 4800
    counts = Counter(tuple(_C.sample_instance_balanced(4, 11, e)) for e in range(epochs))
    assert len(counts) == 24
    ok, stat = chi2_ok(list(counts.values()), epochs / 24)
    assert ok, stat


# ---- class-balanced ----------------------------------------------------------------

def long_tailed_labels(rng):
    # 40 ages with counts from 800 down to 1 (a Zipf-like tail), shuffled
    counts = np.maximum(1, (800 / np.arange(1, 41) ** 1.3).astype(int))
    labels = np.repeat(np.arange(10, 50), counts)
    return rng.permutation(labels).astype(np.int64), counts


def test_class_frequencies_uniform_on_long_tail(rng):
    labels, counts = long_tailed_labels(rng)
    length = 60_000
    idx = assert_unmodified(lambda l: _C.sample_class_balanced(l, 5, 0, length=length), labels)
    assert idx.shape == (length,) and idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() < labels.size
    drawn = labels[idx]
    per_class = np.bincount(drawn - 10, minlength=40)
    ok, stat = chi2_ok(per_class, length / 40)
    assert ok, stat
    # the instance-balanced proportions would be wildly different from this
    assert per_class.max() / per_class.min() < 1.3
    assert counts.max() / counts.min() > 100


def test_instances_uniform_within_a_class(rng):
    labels, counts = long_tailed_labels(rng)
    idx = _C.sample_class_balanced(labels, 9, 2, length=80_000)
    for age in (10, 15):  # a head class and a mid class
        members = np.flatnonzero(labels == age)
        hits = idx[labels[idx] == age]
        per_member = np.array([np.count_nonzero(hits == m) for m in members])
        ok, stat = chi2_ok(per_member, hits.size / members.size)
        assert ok, (age, stat)
    # the single-instance tail class always yields its one index
    tail = np.flatnonzero(labels == 49)
    assert set(idx[labels[idx] == 49].tolist()) == set(tail.tolist())


def test_class_balanced_reproducible_and_thread_independent(rng):
    labels, _ = long_tailed_labels(rng)
    n_threads = glae.get_num_threads()
    try:
        glae.set_num_threads(1)
        a = _C.sample_class_balanced(labels, 3, 4, length=40_000)  # above the OpenMP threshold
        glae.set_num_threads(2)
        b = _C.sample_class_balanced(labels, 3, 4, length=40_000)
    finally:
        glae.set_num_threads(n_threads)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _C.sample_class_balanced(labels, 3, 5, length=40_000))
    assert not np.array_equal(a, _C.sample_class_balanced(labels, 4, 4, length=40_000))
    # a shorter epoch is a prefix of a longer one (draw t depends on t alone)
    np.testing.assert_array_equal(_C.sample_class_balanced(labels, 3, 4, length=100), a[:100])


def test_class_balanced_length_and_label_kinds():
    labels = np.array([30, 30, 30, 2, 2, 71], np.int32)
    assert _C.sample_class_balanced(labels, 0, 0).shape == (6,)  # default: the dataset size
    assert _C.sample_class_balanced(labels, 0, 0, length=0).shape == (0,)
    i64 = _C.sample_class_balanced(labels.astype(np.int64), 1, 1, length=50)
    np.testing.assert_array_equal(_C.sample_class_balanced(labels, 1, 1, length=50), i64)
    # float ages get their whole-year class, half up (age_class): 29.5 and 30.4 are 30,
    # 1.5 and 2.4 are 2, 70.5 is 71 (half to even would make 70.5 -> 70, a class of its own)
    fl = np.array([29.6, 30.4, 29.5, 1.5, 2.4, 70.5])
    for dt in (np.float32, np.float64):
        np.testing.assert_array_equal(_C.sample_class_balanced(fl.astype(dt), 1, 1, length=50), i64)
    np.testing.assert_array_equal(_C.age_class(fl.astype(np.float32)), labels)
    # a single class is sampled uniformly like instance-balanced with replacement
    one = _C.sample_class_balanced(np.full(7, 25, np.int64), 0, 0, length=70)
    assert set(one.tolist()) <= set(range(7))


def test_no_reference_leaks():
    labels = np.array([1, 2, 2, 3], np.int64)
    assert_no_leak(lambda l: _C.sample_class_balanced(l, 1, 1), labels)
    assert_no_leak(lambda: _C.sample_instance_balanced(10, 1, 1))


def test_bad_arguments():
    lab = np.array([1, 2, 3], np.int64)
    with pytest.raises(TypeError, match="labels must be a numpy.ndarray"):
        _C.sample_class_balanced([1, 2, 3], 0, 0)
    with pytest.raises(TypeError, match="labels must have dtype int32, int64, float32 or float64"):
        _C.sample_class_balanced(lab.astype(np.uint8), 0, 0)
    with pytest.raises(ValueError, match="labels must have 1 dimensions"):
        _C.sample_class_balanced(lab.reshape(3, 1), 0, 0)
    with pytest.raises(ValueError, match="labels must be C-contiguous"):
        _C.sample_class_balanced(np.arange(6)[::2], 0, 0)
    with pytest.raises(ValueError, match="labels must not be empty"):
        _C.sample_class_balanced(np.zeros(0, np.int64), 0, 0)
    with pytest.raises(ValueError, match=r"labels\[1\] is not a finite age"):
        _C.sample_class_balanced(np.array([1.0, np.nan]), 0, 0)
    with pytest.raises(ValueError, match=r"labels\[0\] is not a finite age >= 0: -2"):
        _C.sample_class_balanced(np.array([-2.0, 3.0], np.float32), 0, 0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        _C.sample_class_balanced(lab, -1, 0)
    with pytest.raises(ValueError, match="epoch must be <= 4294967295"):
        _C.sample_class_balanced(lab, 0, 2**32)
    with pytest.raises(ValueError, match="length must be >= 0"):
        _C.sample_class_balanced(lab, 0, 0, length=-5)
    with pytest.raises(TypeError, match="length must be an int"):
        _C.sample_class_balanced(lab, 0, 0, length=5.0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        _C.sample_instance_balanced(-1, 0, 0)
    with pytest.raises(ValueError, match="n must be <= 4294967295"):
        _C.sample_instance_balanced(2**32, 0, 0)
    with pytest.raises(ValueError, match="seed must be <= 18446744073709551615"):
        _C.sample_instance_balanced(3, 2**64, 0)
    with pytest.raises(TypeError, match="seed must be an int"):
        _C.sample_instance_balanced(3, 1.0, 0)
    with pytest.raises(TypeError, match="epoch must be an int"):
        _C.sample_instance_balanced(3, 1, True)


def power_reference(labels, power, alpha):
    """NumPy reference of sample_class_power's class distribution (Kang et al. 2020): class
    c with n_c members drawn with (1 - alpha) n_c / n + alpha n_c^power / sum n_j^power."""
    classes, counts = np.unique(labels, return_counts=True)
    w = counts.astype(np.float64) ** power
    return classes, (1 - alpha) * counts / counts.sum() + alpha * w / w.sum()


@pytest.mark.parametrize("power,alpha", [(0.5, 1.0), (0.0, 1.0), (1.0, 1.0), (0.0, 0.0),
                                         (0.0, 0.4), (0.5, 0.7)])
def test_class_power_frequencies(rng, power, alpha):
    labels, _ = long_tailed_labels(rng)
    length = 60_000
    idx = assert_unmodified(lambda l: _C.sample_class_power(l, 5, 0, length, power=power,
                                                              alpha=alpha), labels)
    assert idx.shape == (length,) and idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() < labels.size
    classes, p = power_reference(labels, power, alpha)
    per_class = np.array([np.count_nonzero(labels[idx] == c) for c in classes])
    ok, stat = chi2_ok(per_class, length * p)
    assert ok, (power, alpha, stat)


def test_class_power_instances_and_determinism(rng):
    labels, _ = long_tailed_labels(rng)
    idx = _C.sample_class_power(labels, 9, 2, 80_000, power=0.5)
    members = np.flatnonzero(labels == 10)  # the head class: instances uniform within it
    hits = idx[labels[idx] == 10]
    ok, stat = chi2_ok(np.array([np.count_nonzero(hits == m) for m in members]),
                       hits.size / members.size)
    assert ok, stat
    n_threads = glae.get_num_threads()
    try:
        glae.set_num_threads(1)
        a = _C.sample_class_power(labels, 3, 4, 40_000, power=0.5)
        glae.set_num_threads(2)
        b = _C.sample_class_power(labels, 3, 4, 40_000, power=0.5)
    finally:
        glae.set_num_threads(n_threads)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _C.sample_class_power(labels, 3, 5, 40_000, power=0.5))
    np.testing.assert_array_equal(_C.sample_class_power(labels, 3, 4, 100, power=0.5), a[:100])
    # float ages are classed as sample_class_balanced does (half up)
    np.testing.assert_array_equal(
        _C.sample_class_power(np.array([1.5, 2.0, 2.4, 7.0], np.float32), 1, 0, 50, power=0.5),
        _C.sample_class_power(np.array([2, 2, 2, 7], np.int64), 1, 0, 50, power=0.5))


@pytest.mark.parametrize("kw,msg", [({"power": -0.1}, "power"), ({"power": 1.5}, "power"),
                                    ({"alpha": 1.01}, "alpha"), ({"alpha": float("nan")}, "alpha")])
def test_class_power_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _C.sample_class_power(np.arange(5), 0, 0, 10, **kw)
    with pytest.raises(ValueError, match="empty"):
        _C.sample_class_power(np.zeros(0, np.int64), 0, 0, 10)
