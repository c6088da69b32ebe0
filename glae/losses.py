"""Label distributions for the LDL losses of LAE / GLAE (see docs/losses.md).

The numerics are in the C engine (``glae._C.label_distribution``); this module accepts
friendly inputs (lists, scalars, any numeric arrays), validates them with messages that
name the problem, and hands float32 contiguous arrays to C.
"""
import operator

import numpy as np

from ._lib import _C

__all__ = ["label_distribution"]


def _as_float_array(x, name):
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{name} could not be converted to an array: {e}") from None
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer)
                                    or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"{name} must be real numbers, got dtype {a.dtype}")
    return a.astype(np.float64, copy=False)


def label_distribution(ages, sigma=1.0, num_classes=101, normalize=True):
    """Gaussian label distributions over the ages 0..num_classes-1 (LAE 2.1, GLAE eq. 1).

    z[i, k] = exp(-(k - ages[i])^2 / (2 sigma_i^2)) / (sqrt(2 pi) sigma_i)

    ages: a number or a 1-D sequence of ages in [0, num_classes - 1] (fractional ages allowed).
    sigma: a positive number, or one positive value per age.
    normalize: rescale each row to sum to 1 (default). The paper's density does not sum
        to 1 near the ends of the age range or for small/large sigma, and the KL loss
        to an unnormalised target is not a divergence (it can be negative);
        normalize=False keeps the paper's literal formula.

    Returns float32 (len(ages), num_classes), or (num_classes,) for a scalar age.
    """
    try:
        k = operator.index(num_classes)
    except TypeError:
        raise TypeError(f"num_classes must be an integer, got {type(num_classes).__name__}") from None
    if k < 1:
        raise ValueError(f"num_classes must be >= 1, got {k}")
    y = _as_float_array(ages, "ages")
    scalar = y.ndim == 0
    if y.ndim > 1:
        raise ValueError(f"ages must be a number or 1-D, got shape {y.shape}")
    y = y.reshape(-1)
    bad = ~np.isfinite(y)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"ages must be finite, got ages[{i}] = {y[i]}")
    bad = (y < 0) | (y > k - 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"ages must lie in [0, {k - 1}] (num_classes={k}), got ages[{i}] = {y[i]:g}")

    s = _as_float_array(sigma, "sigma")
    if s.ndim == 0:
        sv = float(s)
        if not (np.isfinite(sv) and sv > 0):
            raise ValueError(f"sigma must be finite and > 0, got {sv:g}")
        s_arg = sv
        f32 = np.float32(sv)
        if not (np.isfinite(f32) and f32 > 0):
            raise ValueError(f"sigma = {sv:g} is not a finite value > 0 in float32")
    else:
        if s.ndim != 1 or s.shape[0] != y.shape[0]:
            raise ValueError(f"sigma must be a number or have one value per age ({y.shape[0]}), "
                             f"got shape {s.shape}")
        bad = ~(np.isfinite(s) & (s > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"sigma must be finite and > 0, got sigma[{i}] = {s[i]:g}")
        with np.errstate(over="ignore"):
            s_arg = np.ascontiguousarray(s, dtype=np.float32)
        bad = ~(np.isfinite(s_arg) & (s_arg > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"sigma[{i}] = {s[i]:g} is not a finite value > 0 in float32")

    z = _C.label_distribution(np.ascontiguousarray(y, dtype=np.float32), s_arg, k, bool(normalize))
    return z[0] if scalar else z
