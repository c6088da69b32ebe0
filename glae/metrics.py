"""Evaluation metrics of LAE and GLAE, computed in C (``csrc/metrics``).

Every function takes true ages ``y`` and predictions ``yhat`` as 1-D sequences of equal
length (converted to float32). Conventions, all documented in ``docs/metrics.md``:

* a true age is assigned to the integer age ``floor(y + 0.5)`` of its float32 value
  wherever ages are grouped (CMAE, AAR, group MAE, shots, per-age, routing usage):
  :func:`age_class`, the one rule of the engine; errors always use the raw values;
* true ages must be finite and >= 0, predictions finite; empty input, mismatched lengths,
  NaN/inf and negative true ages raise ``ValueError``;
* an empty group is reported as ``None`` (never NaN), so it cannot silently poison an
  average; the only NaN is in :func:`per_age_mae`'s plot array, which is also masked.
"""
import numbers
import operator

import numpy as np

from ._lib import _C

#: LAE Table 1: the eight AAR groups of the Guess The Age contest (MIVIA).
LAE_GROUPS = ((1, 10), (11, 20), (21, 30), (31, 40), (41, 50), (51, 60), (61, 70), (71, 81))
#: GLAE eq. 15-16: n = 10 groups of 10 years, 0-9, ..., 80-89 and 90-100 (the label range
#: ends at 100, so the last group takes it rather than leaving a one-age 11th group).
GLAE_GROUPS = tuple((lo, lo + 9) for lo in range(0, 90, 10)) + ((90, 100),)
#: GLAE V-D, Tables VIII-IX: children and teenagers / adults / elderly.
TAIL_HEAD_GROUPS = ((0, 17), (18, 65), (66, 100))
#: DIR (Yang et al. 2021) shot thresholds on the number of training images of an age.
MANY_SHOT_THR = 100
FEW_SHOT_THR = 20
SHOTS = ("many", "medium", "few")

__all__ = [
    "FEW_SHOT_THR", "GLAE_GROUPS", "LAE_GROUPS", "MANY_SHOT_THR", "SHOTS", "TAIL_HEAD_GROUPS",
    "aar", "age_class", "cmae", "cs", "epsilon_error", "group_mae", "mae", "per_age_mae", "report",
    "routing_usage", "shot_mae",
]


def age_class(ages, num_classes=101):
    """The whole-year class of each age: ``floor(age + 0.5)`` (half up, 20.5 -> 21) of its
    float32 value, clamped to 0..num_classes-1 (None: no upper bound). The C rule of every
    metric (core/age.h), used for training labels, histograms, plots and protocols. Returns
    int64 of the shape of ``ages``; NaN or infinite ages raise ValueError."""
    a = np.asarray(ages)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"ages must hold numbers, got dtype {a.dtype}")
    if num_classes is None:
        k = 2**63 - 1
    else:
        try:
            k = operator.index(num_classes)
        except TypeError:
            raise TypeError(f"num_classes must be an integer or None, got {num_classes!r}") from None
    flat = np.ascontiguousarray(a.reshape(-1), dtype=np.float32)
    return _C.age_class(flat, k).reshape(a.shape)


def _vec(x, name):
    """A float32, C-contiguous, 1-D copy/view of x (never the caller's array modified)."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _pair(y, yhat):
    y, yhat = _vec(y, "y"), _vec(yhat, "yhat")
    if y.shape != yhat.shape:
        raise ValueError(f"y and yhat must have the same length, got {y.size} and {yhat.size}")
    return y, yhat


def _ranges(edges, name="edges"):
    """((lo, hi), ...) inclusive integer ranges -> (lo int32, hi int32, labels)."""
    try:
        pairs = [tuple(e) for e in edges]
    except TypeError:
        raise TypeError(f"{name} must be a sequence of (low, high) pairs") from None
    if not pairs:
        raise ValueError(f"{name} must hold at least one (low, high) pair")
    lo, hi = [], []
    for p in pairs:
        if len(p) != 2 or not all(isinstance(v, numbers.Integral) for v in p):
            raise ValueError(f"{name}: each group must be a (low, high) pair of integers, got {p}")
        if not 0 <= p[0] <= p[1] <= 2**31 - 1:
            raise ValueError(f"{name}: group {p} must satisfy 0 <= low <= high")
        lo.append(int(p[0]))
        hi.append(int(p[1]))
    labels = [f"{a}-{b}" if a != b else f"{a}" for a, b in zip(lo, hi)]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{name}: groups must be distinct, got {pairs}")
    return np.array(lo, np.int32), np.array(hi, np.int32), labels


def _opt(v):
    """C reports an empty group as NaN with count 0; Python reports it as None."""
    v = float(v)
    return None if np.isnan(v) else v


def mae(y, yhat):
    """GLAE eq. 12: mean |y - yhat| over all images."""
    return _C.metrics_mae(*_pair(y, yhat))


def cmae(y, yhat):
    """GLAE eq. 13: the mean, over the integer ages present in y (y rounded half up), of
    each age's MAE; every age present counts once whatever its number of images."""
    return _C.metrics_cmae(*_pair(y, yhat))[0]


def per_age_mae(y, yhat, num_classes=101):
    """Per integer age k = 0..num_classes-1: (mae, count) for plots.

    ``mae`` is a ``numpy.ma.MaskedArray`` (float64) masked where ``count == 0``; the data
    under the mask is NaN, so ``mae.mean()`` averages present ages only (that is CMAE) while
    ``np.asarray(mae).mean()`` is NaN, never a silently wrong number. ``count`` is int64.
    A true age >= num_classes raises ValueError."""
    if not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    m, c = _C.metrics_per_age(*_pair(y, yhat), int(num_classes))
    return np.ma.MaskedArray(m, mask=(c == 0), fill_value=np.nan), c


def _aar_starts(groups):
    if isinstance(groups, str):
        key = groups.lower()
        if key not in ("lae", "glae"):
            raise ValueError(f"groups must be 'lae', 'glae' or (low, high) pairs, got {groups!r}")
        groups = LAE_GROUPS if key == "lae" else GLAE_GROUPS
    lo, hi, labels = _ranges(groups, "groups")
    if np.any(lo[1:] != hi[:-1] + 1):
        raise ValueError("groups: AAR groups must be contiguous (each low = previous high + 1)")
    return lo, labels


def aar(y, yhat, groups="lae"):
    """Age Accuracy and Regularity, AAR = max(0, 7 - MAE) + max(0, 3 - sigma).

    groups="lae": LAE eq. 6-7 with Table 1's eight groups 1-10, ..., 61-70, 71-81.
    groups="glae": GLAE eq. 15-16 with 10-year groups 0-9, ..., 80-89, 90-100.
    Or contiguous (low, high) pairs. Ages are rounded half up; an age outside the table goes
    to the nearest end group. sigma = sqrt(sum_j (MAE^j - MAE)^2 / n) over the n groups
    that hold images (an empty group is left out and listed in ``missing``).

    Returns {"aar", "mae", "sigma", "group_mae": {label: MAE or None},
    "group_count": {label: int}, "groups_present": n, "missing": [labels]}."""
    starts, labels = _aar_starts(groups)
    a, m, s, gm, gc = _C.metrics_aar(*_pair(y, yhat), starts)
    return {
        "aar": a,
        "mae": m,
        "sigma": s,
        "group_mae": {k: (_opt(v) if c else None) for k, v, c in zip(labels, gm, gc)},
        "group_count": {k: int(c) for k, c in zip(labels, gc)},
        "groups_present": int(np.count_nonzero(gc)),
        "missing": [k for k, c in zip(labels, gc) if c == 0],
    }


def epsilon_error(y, yhat, sigma):
    """Chalearn LAP epsilon-error (GLAE eq. 14), averaged over images:
    1 - (1/N) sum_i exp(-(yhat_i - y_i)^2 / (2 sigma_i^2)), every sigma_i > 0.
    (The paper's eq. 14 omits the 1/N; without it the value is not in [0, 1].)"""
    y, yhat = _pair(y, yhat)
    s = _vec(sigma, "sigma")
    if s.shape != y.shape:
        raise ValueError(f"sigma must have the length of y ({y.size}), got {s.size}")
    return _C.metrics_epsilon(y, yhat, s)


def group_mae(y, yhat, edges=TAIL_HEAD_GROUPS):
    """MAE and CMAE per group of inclusive integer age ranges (GLAE Tables VIII and IX).

    Returns {label: {"mae", "cmae", "count", "n_ages"} or None when the group has no image}.
    "mae" weights every image equally, "cmae" every age present in the group (Table IX).
    Images whose age is in no group are ignored."""
    lo, hi, labels = _ranges(edges)
    m, c, n, k = _C.metrics_group_mae(*_pair(y, yhat), lo, hi)
    return {
        lab: ({"mae": float(m[g]), "cmae": float(c[g]), "count": int(n[g]), "n_ages": int(k[g])}
              if n[g] else None)
        for g, lab in enumerate(labels)
    }


def cs(y, yhat, theta):
    """Cumulative score: the fraction of images with |y - yhat| <= theta. A scalar theta
    gives a float; a sequence of thetas gives the curve as a float64 array."""
    t = np.asarray(theta)
    if t.dtype.kind not in "biuf":
        raise TypeError(f"theta must hold numbers, got dtype {t.dtype}")
    if t.ndim > 1:
        raise ValueError(f"theta must be a scalar or 1-D, got shape {t.shape}")
    out = _C.metrics_cs(*_pair(y, yhat), np.ascontiguousarray(t.reshape(-1), dtype=np.float64))
    return float(out[0]) if t.ndim == 0 else out


def shot_mae(y, yhat, train_ages, many_thr=MANY_SHOT_THR, few_thr=FEW_SHOT_THR):
    """MAE by shot as in DIR (Yang et al. 2021): an integer test age is many-shot when the
    training set holds more than ``many_thr`` (100) images of it, few-shot when fewer than
    ``few_thr`` (20), medium otherwise. Returns {"many"|"medium"|"few": {"mae" (per image),
    "cmae" (per age), "count", "n_ages"} or None when no test image falls in that shot}."""
    for name, v in (("many_thr", many_thr), ("few_thr", few_thr)):
        if not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {v!r}")
    m, c, n, k = _C.metrics_shot(*_pair(y, yhat), _vec(train_ages, "train_ages"),
                                 int(many_thr), int(few_thr))
    return {
        s: ({"mae": float(m[j]), "cmae": float(c[j]), "count": int(n[j]), "n_ages": int(k[j])}
            if n[j] else None)
        for j, s in enumerate(SHOTS)
    }


def routing_usage(y, choice, edges=TAIL_HEAD_GROUPS):
    """GLAE Fig. 4: per group of true ages, the fraction of images that Adaptive Routing
    answered with the vanilla head (choice 0) and with the balanced head (choice 1).
    Returns {label: {"vanilla", "balanced", "count"} or None when the group is empty}."""
    y = _vec(y, "y")
    c = np.asarray(choice)
    if c.dtype.kind not in "biu":
        raise TypeError(f"choice must hold integers 0/1, got dtype {c.dtype}")
    if c.ndim != 1:
        raise ValueError(f"choice must be 1-D, got shape {c.shape}")
    if c.shape != y.shape:
        raise ValueError(f"y and choice must have the same length, got {y.size} and {c.size}")
    if c.size and (c.min() < 0 or c.max() > 1):
        raise ValueError("choice must hold only 0 (vanilla) and 1 (balanced)")
    lo, hi, labels = _ranges(edges)
    fv, fb, n = _C.metrics_routing(y, np.ascontiguousarray(c, dtype=np.int32), lo, hi)
    return {
        lab: ({"vanilla": float(fv[g]), "balanced": float(fb[g]), "count": int(n[g])}
              if n[g] else None)
        for g, lab in enumerate(labels)
    }


def report(y, yhat, sigma=None, train_ages=None, choice=None, groups=TAIL_HEAD_GROUPS,
           thetas=tuple(range(11))):
    """Every metric at once (each computed in C). Always: n, mae, cmae, aar_lae, aar_glae,
    group (group_mae over ``groups``), cs (thetas -> curve), per_age (mae masked array,
    count). With sigma: epsilon_error; with train_ages: shot; with choice: routing."""
    y, yhat = _pair(y, yhat)
    cm, n_ages = _C.metrics_cmae(y, yhat)
    k = max(101, int(age_class(y.max(), None)) + 1) if y.size else 101
    per_m, per_c = per_age_mae(y, yhat, k)
    out = {
        "n": int(y.size),
        "mae": mae(y, yhat),
        "cmae": cm,
        "ages_present": n_ages,
        "aar_lae": aar(y, yhat, "lae"),
        "aar_glae": aar(y, yhat, "glae"),
        "group": group_mae(y, yhat, groups),
        "cs": {"theta": np.asarray(thetas, np.float64), "cs": cs(y, yhat, list(thetas))},
        "per_age": {"mae": per_m, "count": per_c},
    }
    if sigma is not None:
        out["epsilon_error"] = epsilon_error(y, yhat, sigma)
    if train_ages is not None:
        out["shot"] = shot_mae(y, yhat, train_ages)
    if choice is not None:
        out["routing"] = routing_usage(y, choice, groups)
    return out
