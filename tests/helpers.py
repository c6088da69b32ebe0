"""Test helpers: finite differences, input-preservation and reference-count checks."""
import sys

import numpy as np


def numeric_grad(f, x, eps=1e-3, idx=None):
    """Central differences of the scalar f() w.r.t. x (modified in place and restored).
    x is float32 for the kernels, so eps must not be too small; f is evaluated in float64.
    idx: iterable of flat indices to check (default: all)."""
    g = np.zeros(x.size, dtype=np.float64)
    flat = x.reshape(-1)
    for i in range(x.size) if idx is None else idx:
        old = flat[i]
        flat[i] = old + eps
        fp = float(f())
        flat[i] = old - eps
        fm = float(f())
        flat[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g.reshape(x.shape)


def sample_indices(size, k, rng):
    return rng.choice(size, size=min(size, k), replace=False)


def assert_unmodified(fn, *arrays):
    """fn(*arrays) must leave every input array bitwise unchanged."""
    before = [a.copy() for a in arrays]
    out = fn(*arrays)
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)
    return out


def assert_no_leak(fn, *args, n=200):
    """Reference counts of the arguments must not grow over many calls."""
    fn(*args)
    before = [sys.getrefcount(a) for a in args]
    for _ in range(n):
        fn(*args)
    after = [sys.getrefcount(a) for a in args]
    assert before == after, f"reference counts changed: {before} -> {after}"
