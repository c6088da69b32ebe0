"""Read PyTorch checkpoint files (``torch.save``) without PyTorch.

Two layouts exist:

* legacy (PyTorch < 1.6, still readable by every PyTorch): five pickles back to back --
  the magic number 0x1950a86a20f9469cfc6c, the protocol version 1001, a dict of system
  facts (``little_endian``, type sizes), the object itself, then the list of storage keys
  -- followed, for each key in that order, by an int64 element count and the raw
  storage bytes. Storages appear in the object pickle as persistent ids
  ``('storage', <torch.XStorage>, key, location, numel, view_metadata)``.
* zip (PyTorch >= 1.6, torchvision's ``.pth``): a zip archive with ``<dir>/data.pkl``
  (the object pickle, persistent ids ``('storage', <torch.XStorage>, key, location,
  numel)``), one file ``<dir>/data/<key>`` per storage and optionally
  ``<dir>/byteorder``.

Tensors are rebuilt by ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
...)``. The unpickler here is restricted: it resolves only the handful of globals a
tensor checkpoint needs (``collections.OrderedDict``, the ``_rebuild_*`` helpers, the
``torch.*Storage`` classes and the dtypes) to harmless stand-ins written in this file;
any other global raises :class:`TorchFileError`, so a file can never run code.

Floating-point tensors come back as float32 NumPy arrays (half, bfloat16 and double are
converted), integer and bool tensors keep their dtype (``num_batches_tracked`` is int64).
Every array is a C-contiguous copy honouring the stored offset, shape and strides.
"""
import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

__all__ = ["TorchFileError", "load", "load_state_dict"]

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001


class TorchFileError(ValueError):
    """The file is not a PyTorch checkpoint we can read: truncated, foreign, corrupted,
    or it asks for a global outside the allowed list."""


# storage class name -> (numpy dtype, little-endian); bfloat16 is read as uint16 and widened
_STORAGES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "bf16",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}
# torch dtype global name -> storage dtype code (for _rebuild_tensor_v3 / UntypedStorage)
_DTYPES = {
    "float64": "f8", "double": "f8", "float32": "f4", "float": "f4", "float16": "f2",
    "half": "f2", "bfloat16": "bf16", "int64": "i8", "long": "i8", "int32": "i4", "int": "i4",
    "int16": "i2", "short": "i2", "int8": "i1", "uint8": "u1", "bool": "?",
}


class _StorageType:
    def __init__(self, code):
        self.code = code  # dtype code, or None for UntypedStorage (bytes)


class _Dtype:
    def __init__(self, code):
        self.code = code


class _StorageRef:
    """A storage named by the pickle; its bytes are attached after unpickling."""

    def __init__(self, key, code, numel):
        self.key, self.code, self.numel = key, code, numel


class _LazyTensor:
    def __init__(self, storage, offset, size, stride, code=None):
        if not isinstance(storage, _StorageRef):
            raise TorchFileError("tensor rebuilt from something that is not a storage")
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)
        self.code = code or storage.code


def _rebuild_tensor(storage, offset, size, stride):
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None,
                       metadata=None):
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype,
                       metadata=None):
    if not isinstance(dtype, _Dtype):
        raise TorchFileError("_rebuild_tensor_v3: dtype argument is not a torch dtype")
    return _LazyTensor(storage, offset, size, stride, dtype.code)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data


def _allowed_globals():
    g = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "UntypedStorage"): _StorageType(None),
        ("torch.storage", "UntypedStorage"): _StorageType(None),
    }
    for name, code in _STORAGES.items():
        g[("torch", name)] = _StorageType(code)
    for name, code in _DTYPES.items():
        g[("torch", name)] = _Dtype(code)
    return g


_ALLOWED = _allowed_globals()


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, legacy):
        super().__init__(f)
        self.legacy = legacy
        self.storages = {}  # key -> _StorageRef

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise TorchFileError(
                f"refusing to load global {module}.{name}: only tensors, storages and "
                f"OrderedDicts are allowed in a weight file") from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise TorchFileError(f"unexpected persistent id {pid!r:.80}")
        stype, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(stype, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise TorchFileError(f"malformed storage record {pid!r:.80}")
        if self.legacy and len(pid) > 5 and pid[5] is not None:
            raise TorchFileError("storage views (pre-1.0 files) are not supported")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = _StorageRef(key, stype.code, numel)
        return ref


def _np_dtype(code, little):
    if code == "bf16":
        return np.dtype("<u2" if little else ">u2")
    if code in ("?", "i1", "u1"):
        return np.dtype(code)
    return np.dtype(("<" if little else ">") + code)


def _materialise(t, buffers, little, float32):
    ref = t.storage
    raw = buffers.get(ref.key)
    if raw is None:
        raise TorchFileError(f"storage {ref.key!r} has no data in the file")
    code = t.code or "u1"
    dt = _np_dtype(code, little)
    if len(raw) % dt.itemsize:
        raise TorchFileError(f"storage {ref.key!r}: {len(raw)} bytes is not a whole number "
                             f"of {dt.itemsize}-byte elements")
    flat = np.frombuffer(raw, dtype=dt)
    size, stride, off = t.size, t.stride, t.offset
    if (len(size) != len(stride) or not isinstance(off, int) or off < 0
            or any((not isinstance(v, int)) or v < 0 for v in size + stride)):
        raise TorchFileError(f"storage {ref.key!r}: bad tensor geometry size={size} "
                             f"stride={stride} offset={off}")
    if 0 in size:
        arr = np.zeros(size, dtype=dt)
    else:
        last = off + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:
            raise TorchFileError(f"storage {ref.key!r}: tensor of size {size} at offset {off} "
                                 f"reads past its {flat.size} elements (truncated file?)")
        arr = np.lib.stride_tricks.as_strided(
            flat[off:], shape=size, strides=tuple(s * dt.itemsize for s in stride))
    if code == "bf16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    arr = np.array(arr, dtype=arr.dtype.newbyteorder("=") if arr.dtype.itemsize > 1 else arr.dtype,
                   order="C", copy=True)
    if float32 and arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    return arr


def _walk(obj, fn):
    if isinstance(obj, _LazyTensor):
        return fn(obj)
    if isinstance(obj, collections.OrderedDict):
        out = collections.OrderedDict((k, _walk(v, fn)) for k, v in obj.items())
        return out
    if isinstance(obj, dict):
        return {k: _walk(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk(v, fn) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_walk(v, fn) for v in obj)
    return obj


def _unpickle(f, legacy, what):
    up = _Unpickler(f, legacy)
    try:
        return up.load(), up
    except TorchFileError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error, UnicodeDecodeError, MemoryError) as e:
        raise TorchFileError(f"{what}: not a valid pickle ({type(e).__name__}: {e})") from None


def _load_legacy(f, name):
    # the first three pickles hold plain values: a restricted unpickler reads them too
    magic, _ = _unpickle(f, True, name)
    if magic != _MAGIC:
        raise TorchFileError(f"{name}: not a PyTorch file (wrong magic number)")
    proto, _ = _unpickle(f, True, name)
    if proto != _PROTOCOL:
        raise TorchFileError(f"{name}: unsupported legacy protocol version {proto!r}")
    info, _ = _unpickle(f, True, name)
    if not isinstance(info, dict):
        raise TorchFileError(f"{name}: malformed system-info record")
    little = bool(info.get("little_endian", True))
    obj, up = _unpickle(f, True, name)
    keys, _ = _unpickle(f, True, name)
    if not isinstance(keys, list):
        raise TorchFileError(f"{name}: malformed storage key list")
    buffers = {}
    for key in keys:
        key = str(key)
        ref = up.storages.get(key)
        if ref is None:
            raise TorchFileError(f"{name}: storage {key!r} listed but never used")
        head = f.read(8)
        if len(head) != 8:
            raise TorchFileError(f"{name}: truncated before storage {key!r}")
        (numel,) = struct.unpack("<q" if little else ">q", head)
        item = 1 if ref.code is None else _np_dtype(ref.code, little).itemsize
        if numel != ref.numel:
            raise TorchFileError(f"{name}: storage {key!r} holds {numel} elements, the pickle "
                                 f"said {ref.numel}")
        raw = f.read(numel * item)
        if len(raw) != numel * item:
            raise TorchFileError(f"{name}: truncated in storage {key!r} ({len(raw)} of "
                                 f"{numel * item} bytes)")
        buffers[key] = raw
    return obj, buffers, little


def _load_zip(path, name):
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise TorchFileError(f"{name}: damaged zip archive ({e})") from None
    with zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise TorchFileError(f"{name}: zip archive without a single <dir>/data.pkl "
                                 f"(not a PyTorch file)")
        prefix = pkls[0][: -len("data.pkl")]
        little = True
        if prefix + "byteorder" in names:
            order = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise TorchFileError(f"{name}: unknown byte order {order!r}")
            little = order == "little"
        try:
            obj, up = _unpickle(io.BytesIO(zf.read(pkls[0])), False, name)
            buffers = {}
            for key, ref in up.storages.items():
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise TorchFileError(f"{name}: storage file {member!r} missing")
                raw = zf.read(member)
                item = 1 if ref.code is None else _np_dtype(ref.code, little).itemsize
                if len(raw) < ref.numel * item:
                    raise TorchFileError(f"{name}: storage {key!r} has {len(raw)} bytes, "
                                         f"needs {ref.numel * item}")
                buffers[key] = raw[: ref.numel * item]
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise TorchFileError(f"{name}: damaged zip archive ({e})") from None
    return obj, buffers, little


def load(path, float32=True):
    """Read a ``torch.save`` file. Returns the saved object with every tensor replaced by
    a NumPy array (OrderedDict, dict, list and tuple containers are kept).
    float32: convert floating tensors to float32 (default); False keeps their dtype
    (bfloat16 becomes float32 either way: NumPy has no bfloat16)."""
    path = os.fspath(path)
    name = os.path.basename(path)
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head[:2] == b"PK":
            obj, buffers, little = _load_zip(path, name)
        elif head[:1] == b"\x80":
            obj, buffers, little = _load_legacy(f, name)
        elif len(head) == 0:
            raise TorchFileError(f"{name}: empty file")
        else:
            raise TorchFileError(f"{name}: not a PyTorch checkpoint (neither a zip archive "
                                 f"nor a legacy pickle stream)")
    return _walk(obj, lambda t: _materialise(t, buffers, little, float32))


def load_state_dict(path, float32=True):
    """Read a checkpoint holding a state dict and return it as a plain dict
    name -> array. A checkpoint that wraps it (``{"state_dict": ...}`` or
    ``{"model": ...}``) is unwrapped; non-tensor entries raise TorchFileError."""
    obj = load(path, float32)
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise TorchFileError(f"{os.path.basename(os.fspath(path))}: holds a "
                             f"{type(obj).__name__}, not a state dict")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, np.ndarray):
            raise TorchFileError(f"entry {k!r} is a {type(v).__name__}, not a tensor")
        out[str(k)] = v
    return out
