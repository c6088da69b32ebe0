"""Test helpers: finite differences, input-preservation and leak checks, and a minimal
torch.save writer (both file layouts) for the tests of glae.torchfile and glae.weights."""
import collections
import gc
import io
import pickle
import struct
import sys
import zipfile

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


# ---- a minimal torch.save writer ---------------------------------------------------------
# Files written with the pickle module and the global names torch itself writes
# (torch._utils._rebuild_tensor_v2, torch.FloatStorage, ...), without PyTorch.


class TorchGlobal:
    """A global reference written as GLOBAL module\\nname (no import needed)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *a):  # pickle wants reduce functions to be callable
        raise AssertionError("never called")


class Storage:
    def __init__(self, key, kind, data):
        self.key, self.kind, self.data = key, kind, data  # data: 1-D numpy array


class Tensor:
    def __init__(self, storage, offset, size, stride, param=False):
        self.storage, self.offset, self.size, self.stride, self.param = (
            storage, offset, tuple(size), tuple(stride), param)

    def __reduce__(self):
        t = (TorchGlobal("torch._utils", "_rebuild_tensor_v2"),
             (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))
        if self.param:
            return (TorchGlobal("torch._utils", "_rebuild_parameter"),
                    (_Reduced(t), True, collections.OrderedDict()))
        return t


class _Reduced:
    def __init__(self, rv):
        self.rv = rv

    def __reduce__(self):
        return self.rv


class _TorchPickler(pickle._Pickler):
    def __init__(self, f, legacy):
        super().__init__(f, protocol=2)
        self.legacy = legacy
        self.seen = []

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, TorchGlobal):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        if obj not in self.seen:
            self.seen.append(obj)
        pid = ("storage", TorchGlobal("torch", obj.kind), obj.key, "cpu", obj.data.size)
        return pid + (None,) if self.legacy else pid


def _torch_pickle(obj, legacy):
    buf = io.BytesIO()
    p = _TorchPickler(buf, legacy)
    p.dump(obj)
    return buf.getvalue(), p.seen


def torch_write_legacy(path, obj, little=True):
    """torch.save's layout before 1.6: magic, protocol, sys info, pickle, storage keys,
    then each storage as an int64 count and its bytes."""
    body, storages = _torch_pickle(obj, True)
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": little,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        f.write(body)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q" if little else ">q", s.data.size))
            f.write(s.data.astype(s.data.dtype.newbyteorder("<" if little else ">")).tobytes())


def torch_write_zip(path, obj, prefix="archive", byteorder="little"):
    """The zip layout torch.save has written since 1.6 (torchvision's .pth files)."""
    body, storages = _torch_pickle(obj, False)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", body)
        if byteorder:
            z.writestr(f"{prefix}/byteorder", byteorder)
        for s in storages:
            dt = s.data.dtype.newbyteorder("<" if byteorder != "big" else ">")
            z.writestr(f"{prefix}/data/{s.key}", s.data.astype(dt).tobytes())
        z.writestr(f"{prefix}/version", "3\n")


_STORAGE_KINDS = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage"}


def torch_state_dict(state):
    """{name: array} -> what nn.Module.state_dict() pickles: an OrderedDict of contiguous
    tensors, one storage each (like torchvision's files), with the _metadata attribute."""
    od = collections.OrderedDict()
    for i, (k, v) in enumerate(state.items()):
        a = np.ascontiguousarray(v)
        stride = tuple(int(np.prod(a.shape[j + 1:])) for j in range(a.ndim))
        od[k] = Tensor(Storage(str(i), _STORAGE_KINDS[a.dtype], a.reshape(-1)), 0, a.shape, stride)
    od._metadata = collections.OrderedDict([("", {"version": 1})])  # as nn.Module writes
    return od
