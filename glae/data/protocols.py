"""Evaluation protocols (GLAE section IV-A) as index bookkeeping, reproducible from a seed.

- Morph II random 80-20 and partial 80-20, MIVIA 4:1: :func:`random_split` (partial 80-20
  is the same split on the user's chosen subset).
- CACD (1,800 train / 120 test celebrities) and any data with subject ids:
  :func:`subject_split`, no identity on both sides.
- Chalearn LAP 2015: its official train/valid/test files; read each with read_chalearn.
- MIVIA-LT: :func:`balanced_subset` of the test part, 10 images per age.
- :func:`kfold`, optionally subject-exclusive.
- :func:`deduplicate` before any split, so no image is on both sides through a copy.

All functions return int64 index arrays into the arrays they were given. Randomness is the
engine's counter-based Philox generator (``_C.rng_permutation``, keyed by seed, a stream
per kind of draw and the position), so a seed gives the same split on every machine and
NumPy version (docs/data.md).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np

from .._lib import _C
from ..metrics import age_class

__all__ = ["DedupReport", "PROTOCOLS", "age_classes", "balanced_subset", "deduplicate", "kfold",
           "random_split", "split", "subject_split"]

# name -> (ratios, subject exclusive) for split()
PROTOCOLS = {
    "morph-random-80-20": ((0.8, 0.2), False),
    "morph-partial-80-20": ((0.8, 0.2), False),  # on the user's 5,493-image Caucasian subset
    "mivia-4-1": ((4, 1), False),
}


# the Philox stream of each kind of draw, so that e.g. subject_split does not reuse
# random_split's shuffle of the same length (kfold shares random_split's, as it always did)
_STREAM_ORDER, _STREAM_SUBJECTS, _STREAM_BALANCED = 0, 1, 2


def _permutation(n: int, seed, stream: int) -> np.ndarray:
    """_C.rng_permutation: the same for a seed on every machine and NumPy version."""
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an integer, got {seed!r}") from None
    return _C.rng_permutation(n, seed, stream)


def _n(n_or_array) -> int:
    if np.isscalar(n_or_array):
        n = int(n_or_array)
    else:
        n = len(n_or_array)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return n


def _ratios(ratios):
    r = np.asarray(ratios, dtype=np.float64).reshape(-1)
    if r.size < 1 or not np.all(np.isfinite(r)) or np.any(r < 0) or r.sum() <= 0:
        raise ValueError(f"ratios must be >= 0 with a positive sum, got {list(ratios)}")
    return r / r.sum()


def _cut(n, ratios):
    """Part sizes summing to n, each the rounded cumulative share (so 80/20 of 101 is 81/20)."""
    bounds = np.rint(np.cumsum(ratios) * n).astype(np.int64)
    bounds[-1] = n
    return np.diff(np.concatenate([[0], bounds]))


def random_split(n_or_array, ratios=(0.8, 0.2), seed: int = 0) -> tuple:
    """Shuffle 0..n-1 with `seed` and cut it by `ratios` (normalised: (4, 1) == (0.8, 0.2)).
    Returns one sorted index array per part; together they are 0..n-1 exactly once."""
    n = _n(n_or_array)
    perm = _permutation(n, seed, _STREAM_ORDER)
    out, start = [], 0
    for k in _cut(n, _ratios(ratios)):
        out.append(np.sort(perm[start:start + k]).astype(np.int64))
        start += k
    return tuple(out)


def _groups(identities):
    """Group labels: identities >= 0 as given; each unknown (-1) image its own group."""
    ids = np.asarray(identities).reshape(-1).astype(np.int64)
    unknown = ids < 0
    g = ids.copy()
    if unknown.any():
        g[unknown] = ids.max(initial=0) + 1 + np.arange(unknown.sum())
    return g


def subject_split(identities, ratios=(0.8, 0.2), seed: int = 0) -> tuple:
    """Split so that no identity appears in two parts. Subjects are shuffled with `seed` and
    each goes to the part furthest below its target image count, so part sizes follow
    `ratios` as closely as whole subjects allow. Images with unknown identity (-1) count
    as a subject each (document your data if that is wrong for it)."""
    g = _groups(identities)
    r = _ratios(ratios)
    uniq, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
    order = _permutation(len(uniq), seed, _STREAM_SUBJECTS)
    target = r * len(g)
    filled = np.zeros(len(r))
    part_of_subject = np.empty(len(uniq), np.int64)
    for s in order:
        # deficit relative to target; ties go to the earlier part
        p = int(np.argmax(np.where(r > 0, target - filled, -np.inf)))
        part_of_subject[s] = p
        filled[p] += counts[s]
    part = part_of_subject[inv]
    return tuple(np.flatnonzero(part == p).astype(np.int64) for p in range(len(r)))


def split(name: str, n_or_array, seed: int = 0, identities=None) -> tuple:
    """A named protocol from PROTOCOLS; subject-exclusive when `identities` is given."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}")
    ratios, _ = PROTOCOLS[name]
    if identities is not None:
        if len(identities) != _n(n_or_array):
            raise ValueError("identities must have one entry per image")
        return subject_split(identities, ratios, seed)
    return random_split(n_or_array, ratios, seed)


@dataclass
class DedupReport:
    n_in: int = 0
    n_kept: int = 0
    n_groups: int = 0  # hashes seen more than once
    dropped_copies: list = field(default_factory=list)  # extra copies with the same age
    dropped_conflicts: list = field(default_factory=list)  # every copy of a group whose ages disagree

    def __str__(self):
        return (f"deduplicate: {self.n_in} in, {self.n_kept} kept, {self.n_groups} duplicated images, "
                f"{len(self.dropped_copies)} same-age copies dropped, "
                f"{len(self.dropped_conflicts)} images with conflicting ages dropped")


def deduplicate(hashes, ages, tol: float = 0.0):
    """Remove duplicate images found by content hash (PackedDataset.hashes, (N, 32) uint8, or
    any N hashable keys). In a group of copies whose ages agree (within `tol`), the first
    (lowest index) is kept and the others dropped; when the ages disagree (UTKFace has such
    byte-identical images), every copy is dropped: no one knows which label is right, and
    keeping one would put a wrong label in train or test. Returns (kept indices sorted,
    DedupReport)."""
    ages = np.asarray(ages, dtype=np.float64).reshape(-1)
    h = np.asarray(hashes)
    if h.ndim == 2:
        keys = np.ascontiguousarray(h).view(np.dtype((np.void, h.shape[1] * h.dtype.itemsize))).reshape(-1)
    else:
        keys = h.reshape(-1)
    if len(keys) != len(ages):
        raise ValueError(f"hashes ({len(keys)}) and ages ({len(ages)}) differ in length")
    _, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    rep = DedupReport(n_in=len(ages))
    keep = np.ones(len(ages), bool)
    for gidx in np.flatnonzero(counts > 1):
        members = np.flatnonzero(inv == gidx)
        rep.n_groups += 1
        a = ages[members]
        if a.max() - a.min() > tol:
            keep[members] = False
            rep.dropped_conflicts.extend(int(m) for m in members)
        else:
            keep[members[1:]] = False
            rep.dropped_copies.extend(int(m) for m in members[1:])
    kept = np.flatnonzero(keep).astype(np.int64)
    rep.n_kept = len(kept)
    return kept, rep


def age_classes(ages, max_age: int = 100) -> np.ndarray:
    """Integer age classes 0..max_age (101 classes): glae.metrics.age_class, half up."""
    return age_class(ages, int(max_age) + 1)


def balanced_subset(ages, n_per_age: int = 10, seed: int = 0, indices=None, short: str = "skip") -> np.ndarray:
    """A test set with `n_per_age` images of every age class (MIVIA-LT: 10 per age, drawn
    from the test part: pass its indices). Ages with fewer images: short="skip" leaves the
    age out (the set stays exactly balanced; default), "all" takes all it has, "raise"
    raises ValueError. Returns sorted indices (into `ages`)."""
    if short not in ("skip", "all", "raise"):
        raise ValueError(f'short must be "skip", "all" or "raise", got {short!r}')
    n_per_age = int(n_per_age)
    if n_per_age < 1:
        raise ValueError(f"n_per_age must be >= 1, got {n_per_age}")
    ages = np.asarray(ages)
    pool = np.arange(len(ages)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    # one shuffle of the pool; each age takes its first n_per_age members in that order
    shuffled = pool[_permutation(len(pool), seed, _STREAM_BALANCED)]
    cls = age_classes(ages[shuffled])
    out = []
    for c in np.unique(cls):
        members = shuffled[cls == c]
        if len(members) < n_per_age:
            if short == "raise":
                raise ValueError(f"age {c} has {len(members)} images, fewer than n_per_age={n_per_age}")
            if short == "skip":
                continue
            out.append(members)
        else:
            out.append(members[:n_per_age])
    return np.sort(np.concatenate(out)).astype(np.int64) if out else np.zeros(0, np.int64)


def kfold(n_or_array, k: int = 5, seed: int = 0, identities=None) -> list:
    """k (train, test) index pairs; every index is in exactly one test fold. With
    `identities` the folds are subject-exclusive (subjects spread greedily by size)."""
    k = int(k)
    n = _n(n_or_array)
    if k < 2 or k > max(n, 2):
        raise ValueError(f"k must be in 2..n ({n}), got {k}")
    if identities is None:
        perm = _permutation(n, seed, _STREAM_ORDER)
        folds = np.array_split(perm, k)
    else:
        if len(identities) != n:
            raise ValueError("identities must have one entry per image")
        folds = list(subject_split(identities, np.ones(k), seed))
    out = []
    for i in range(k):
        test = np.sort(folds[i]).astype(np.int64)
        train = np.sort(np.concatenate([folds[j] for j in range(k) if j != i])).astype(np.int64)
        out.append((train, test))
    return out
