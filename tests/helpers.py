"""Test helpers: finite differences, input-preservation and leak checks."""
import gc
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


def _blocks_grown(fn, args, n, generation):
    gc.collect(generation)
    blocks = sys.getallocatedblocks()
    for _ in range(n):
        fn(*args)
    gc.collect(generation)
    return sys.getallocatedblocks() - blocks


def assert_no_leak(fn, *args, n=200):
    """Many calls of fn(*args) must leave nothing behind: the arguments' reference counts
    stay put (a binding that forgets a DECREF on an input), and the number of memory blocks
    the Python allocator holds does not grow by one or more per call (an output array, a
    tuple or a temporary copy that is never released: every Python object, ndarray headers
    included, is such a block). sys.getallocatedblocks() is cheap, unlike tracemalloc. The
    count is taken after a young-generation collection; only when that shows growth is it
    retaken with full collections (~40 ms each in the suite), since cyclic garbage such as
    pytest.raises' tracebacks can reach the old generation."""
    fn(*args)
    fn(*args)  # warm up lazily created caches and free lists
    # small ints, interned strings, None: shared by the whole interpreter, their counts move
    watched = [a for a in args if not isinstance(a, (int, float, str, bytes, type(None)))]
    before = [sys.getrefcount(a) for a in watched]
    grown = _blocks_grown(fn, args, n, 1)
    if grown >= n:
        grown = _blocks_grown(fn, args, n, 2)
    after = [sys.getrefcount(a) for a in watched]
    assert before == after, f"reference counts changed: {before} -> {after}"
    assert grown < n, (f"{grown} more memory blocks held after {n} calls of {fn!r}: "
                       "an output or temporary object leaks")
