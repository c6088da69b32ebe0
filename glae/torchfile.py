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
any other global raises :class:`TorchFileError`, so a file can never run code. The
stand-ins are made afresh for every load and cannot be modified (a pickle's BUILD on one
is refused), so one file cannot change how another is read.

A hostile file cannot make the reader hang or allocate without bound either:

* the object graph is walked once per object (objects the pickle shares through its memo
  stay shared in the result), at most :data:`MAX_DEPTH` containers deep and
  :data:`MAX_NODES` references in all; a cycle is refused;
* every tensor's geometry (offset, sizes, strides) is checked against its storage, and
  the bytes of all the arrays the file would produce are added up, *before* anything is
  allocated: more than ``max_bytes`` (by default 4 x the file's size + 64 MiB, which a
  real checkpoint never comes near: a view cannot be larger than its storage unless its
  strides repeat elements) is refused;
* storage data is read only after its size was checked against the file (a deflated
  member may expand at most 64:1), and each pickle's opcodes are scanned (pickletools)
  before it is unpickled: a length field longer than the data that follows, a memo index
  beyond the objects made so far (CPython's unpickler zero-fills a memo table twice that
  size) and more than :data:`MAX_NODES` opcodes are refused before the C unpickler
  allocates anything for them.

Errors: anything wrong with the file's content raises :class:`TorchFileError` (a
``ValueError``) whose message names the file and the part that is wrong (the zip
archive, a pickle, a storage, a tensor by its key path); the file not opening, or the
disk failing under the read, raises ``OSError`` (its subclasses: ``FileNotFoundError``,
``IsADirectoryError``, ...). Nothing else escapes: ``zipfile.BadZipFile``,
``OverflowError``, ``RecursionError``, ``MemoryError`` and the rest become
TorchFileError.

Floating-point tensors come back as float32 NumPy arrays (half, bfloat16 and double are
converted), integer and bool tensors keep their dtype (``num_batches_tracked`` is int64).
Every array is a C-contiguous copy honouring the stored offset, shape and strides. A
torch dtype stored as a value (not inside a tensor) comes back as its name
(``"float16"``); a bare storage as a 1-D array.
"""
import collections
import errno
import io
import os
import pickle
import pickletools
import reprlib
import struct
import zipfile

import numpy as np

__all__ = ["TorchFileError", "load", "load_state_dict", "MAX_DEPTH", "MAX_NODES"]

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001

MAX_DEPTH = 256  # containers nested deeper than this are refused
MAX_NODES = 10_000_000  # references the object graph may hold in all
_MAX_NDIM = 32  # NumPy's limit on dimensions (numpy 1.x)
_MAX_EXTENT = 2 ** 62  # a tensor's elements times its item size, nonzero dims only
_DEFAULT_SLACK = 64 << 20  # max_bytes = 4 x file size + this
_MAX_RATIO = 64  # a deflated member may expand at most this much (+ 1 MiB)


class TorchFileError(ValueError):
    """The file is not a PyTorch checkpoint we can read: truncated, foreign, corrupted,
    too large for what it holds, or it asks for a global outside the allowed list."""


class _Bad(Exception):
    """Raised inside the reader; :func:`load` turns it into a TorchFileError that names
    the file and the part being read."""


class _ShortRepr(reprlib.Repr):
    """repr for messages: bounded in length and depth, whatever the object."""

    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 60, 60
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 6
        self.maxdict = 4

    def repr_int(self, x, level):
        if x.bit_length() > 128:  # repr of a huge int is slow or refused (3.11+)
            return f"<int of {x.bit_length()} bits>"
        return repr(x)

    def repr_bytes(self, x, level):
        return repr(x[:self.maxstring]) + ("..." if len(x) > self.maxstring else "")


_short = _ShortRepr().repr


def _exc_text(e):
    try:
        s = str(e)
    except Exception:  # noqa: BLE001 -- a message that cannot be printed
        s = ""
    return s[:200] + ("..." if len(s) > 200 else "")


# storage class name -> dtype code; bfloat16 is read as uint16 and widened
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
_CODE_NAMES = {"f8": "float64", "f4": "float32", "f2": "float16", "bf16": "bfloat16",
               "i8": "int64", "i4": "int32", "i2": "int16", "i1": "int8", "u1": "uint8",
               "?": "bool"}
_ITEMSIZE = {"f8": 8, "f4": 4, "f2": 2, "bf16": 2, "i8": 8, "i4": 4, "i2": 2, "i1": 1,
             "u1": 1, "?": 1}


# ---- stand-ins: fresh for every load, immutable ------------------------------------------


class _Frozen:
    """Slots only (no __dict__), no attribute can be set or deleted after __init__ and a
    pickle's BUILD opcode (which calls __setstate__ or sets attributes) is refused."""

    __slots__ = ()

    def _init(self, **kw):
        for k, v in kw.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name, value):
        raise _Bad(f"the pickle tries to modify {self!r} (a weight file may only build "
                   "tensors, not change the reader's objects)")

    def __delattr__(self, name):
        self.__setattr__(name, None)

    def __setstate__(self, state):
        self.__setattr__("__dict__", state)


class _StorageType(_Frozen):
    __slots__ = ("name", "code")  # code: dtype code, or None for UntypedStorage (bytes)

    def __init__(self, name, code):
        self._init(name=name, code=code)

    def __repr__(self):
        return f"torch.{self.name}"


class _Dtype(_Frozen):
    __slots__ = ("name", "code")

    def __init__(self, name, code):
        self._init(name=name, code=code)

    def __repr__(self):
        return f"torch.{self.name}"


class _Rebuild(_Frozen):
    """A torch._utils._rebuild_* function."""

    __slots__ = ("name", "fn")

    def __init__(self, name, fn):
        self._init(name=name, fn=fn)

    def __call__(self, *args, **kw):
        return self.fn(*args, **kw)

    def __repr__(self):
        return f"torch._utils.{self.name}"


class _StorageRef(_Frozen):
    """A storage named by the pickle; its bytes are read after unpickling."""

    __slots__ = ("key", "code", "numel")

    def __init__(self, key, code, numel):
        self._init(key=key, code=code, numel=numel)

    def __repr__(self):
        return f"storage {self.key!r}"

    @property
    def nbytes(self):
        return self.numel * (1 if self.code is None else _ITEMSIZE[self.code])


class _LazyTensor(_Frozen):
    """A tensor as the pickle describes it; checked and materialised by the walk."""

    __slots__ = ("storage", "offset", "size", "stride", "code")

    def __init__(self, storage, offset, size, stride, code=None):
        self._init(storage=storage, offset=offset, size=size, stride=stride, code=code)

    def __repr__(self):
        return "tensor"


def _rebuild_tensor(storage, offset, size, stride):
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None,
                       metadata=None):
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype,
                       metadata=None):
    if not isinstance(dtype, _Dtype):
        raise _Bad(f"_rebuild_tensor_v3: dtype argument {_short(dtype)} is not a torch dtype")
    return _LazyTensor(storage, offset, size, stride, dtype.code)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data


def _fresh_globals():
    """The globals a weight file may name, as new stand-ins (one set per load)."""
    g = {("collections", "OrderedDict"): collections.OrderedDict}  # a built-in type: immutable
    for name, fn in (("_rebuild_tensor", _rebuild_tensor),
                     ("_rebuild_tensor_v2", _rebuild_tensor_v2),
                     ("_rebuild_tensor_v3", _rebuild_tensor_v3),
                     ("_rebuild_parameter", _rebuild_parameter),
                     ("_rebuild_parameter_with_state", _rebuild_parameter)):
        g[("torch._utils", name)] = _Rebuild(name, fn)
    g[("torch", "UntypedStorage")] = _StorageType("UntypedStorage", None)
    g[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage", None)
    for name, code in _STORAGES.items():
        g[("torch", name)] = _StorageType(name, code)
    for name, code in _DTYPES.items():
        g[("torch", name)] = _Dtype(name, code)
    return g


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, legacy, allowed, storages):
        super().__init__(f)
        self.legacy, self.allowed = legacy, allowed
        self.storages = storages  # key -> _StorageRef, shared by a file's pickles

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except (KeyError, TypeError):
            raise _Bad(f"refusing to load global {_short(module)[1:-1]}.{_short(name)[1:-1]}: "
                       "only tensors, storages and OrderedDicts are allowed in a weight "
                       "file") from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise _Bad(f"unexpected persistent id {_short(pid)}")
        stype, key, numel = pid[1], pid[2], pid[4]
        if (not isinstance(stype, _StorageType) or type(key) not in (str, int)
                or type(numel) is not int or not 0 <= numel <= _MAX_EXTENT):
            raise _Bad(f"malformed storage record {_short(pid)}")
        if self.legacy and len(pid) > 5 and pid[5] is not None:
            raise _Bad("storage views (pre-1.0 files) are not supported")
        key = str(key)
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = _StorageRef(key, stype.code, numel)
        elif (ref.code, ref.numel) != (stype.code, numel):
            raise _Bad(f"storage {key!r} declared twice, as {ref.numel} x "
                       f"{_CODE_NAMES.get(ref.code, 'bytes')} and as {numel} x "
                       f"{_CODE_NAMES.get(stype.code, 'bytes')}")
        return ref


_PUTS = frozenset(("PUT", "BINPUT", "LONG_BINPUT"))


def _scan_pickle(stream):
    """Walk the next pickle's opcodes without building anything (pickletools) and rewind,
    refusing before the C unpickler sees them:

    * a length field larger than the data that follows (the unpickler reserves that size
      first; CPython's BYTEARRAY8 then reads uninitialised memory and prints a
      SystemError when the reservation fails);
    * a memo index beyond the objects made so far: the unpickler grows its memo table
      to twice the index and zero-fills it (16 bytes per index: a 5-byte LONG_BINPUT
      asks for up to 64 GiB; a 1 kB file took 2.7 GB and 14 s);
    * more than MAX_NODES opcodes (each can make an object of ~60 bytes).

    About as long as the unpickling itself: 5-10 ms for a ResNet-50 state dict's 43 kB
    pickle."""
    start = stream.tell()
    n = 0
    try:
        for op, arg, _ in pickletools.genops(stream):
            n += 1
            if op.name in _PUTS and arg > n:
                raise _Bad(f"memo index {arg} after only {n} opcodes (pickle writers number "
                           "memo entries from 0; the unpickler would allocate 16 bytes per "
                           "index)")
            if n > MAX_NODES:
                raise _Bad(f"more than {MAX_NODES:,} opcodes in the pickle")
    except ValueError as e:
        raise _Bad(f"not a valid pickle ({_exc_text(e)})") from None
    stream.seek(start)


def _np_dtype(code, little):
    if code == "bf16":
        return np.dtype("<u2" if little else ">u2")
    if code in ("?", "i1", "u1"):
        return np.dtype(code)
    return np.dtype(("<" if little else ">") + code)


# ---- the object graph: checked once per object, then rebuilt with NumPy arrays ------------

_LEAVES = (str, int, float, bool, type(None), bytes, bytearray)
_KEY_LEAVES = (str, int, float, bool, type(None), bytes)
_CONTAINERS = (list, tuple, dict, collections.OrderedDict, set, frozenset)


def _key_ok(k):
    t = type(k)
    return t in _KEY_LEAVES or (t is tuple and len(k) <= 64
                                and all(type(x) in _KEY_LEAVES for x in k))


def _path_name(chain):
    """'state_dict.conv1.weight' from the (parent chain, key) pairs of the walk."""
    parts = []
    while chain is not None:
        chain, key = chain
        parts.append(f"[{key}]" if type(key) is int else
                     f".{key}" if type(key) is str else f"[{_short(key)}]")
    s = "".join(reversed(parts))
    s = s[1:] if s.startswith(".") else (s or "<root>")
    return s if len(s) <= 120 else s[:56] + "..." + s[-56:]


class _Tensor:
    """A checked tensor, ready to materialise: (ref, dtype code, size, strides, offset,
    elements of that dtype its storage holds, its name)."""

    __slots__ = ("ref", "code", "size", "stride", "offset", "elements", "name")


def _by_storage(tensors):
    """[(storage ref, [(id, _Tensor), ...])] from the walk's {id: _Tensor}."""
    groups = {}
    for tid, t in tensors.items():
        groups.setdefault(t.ref.key, (t.ref, []))[1].append((tid, t))
    return list(groups.values())


class _Reader:
    def __init__(self, path, float32, max_bytes):
        self.path, self.float32 = path, float32
        self.max_bytes = max_bytes
        self.part = "file"
        self.used = 0  # bytes allocated so far: storage reads (zip) + arrays produced
        self.allowed = _fresh_globals()
        self.storages = {}

    # -- budget ---------------------------------------------------------------------------

    def _spend(self, n, what):
        if self.used + n > self.max_bytes:
            raise _Bad(f"{what} needs {n:,} bytes; with what the file already asked for "
                       f"({self.used:,}) that is more than such a file may produce "
                       f"({self.max_bytes:,} bytes, 4 x its size + 64 MiB by default; pass "
                       "max_bytes= to allow more)")
        self.used += n

    # -- layouts ----------------------------------------------------------------------------

    def _unpickle(self, stream, legacy):
        _scan_pickle(stream)
        return _Unpickler(stream, legacy, self.allowed, self.storages).load()

    def _read_legacy(self, f, size):
        data = f.read(size)  # one allocation (read() of unknown length grows and joins)
        bio = io.BytesIO(data)
        self.part = "header pickles (magic number, protocol, system info)"
        magic = self._unpickle(bio, True)
        if type(magic) is not int or magic != _MAGIC:
            raise _Bad("not a PyTorch file (wrong magic number)")
        proto = self._unpickle(bio, True)
        if type(proto) is not int or proto != _PROTOCOL:
            raise _Bad(f"unsupported legacy protocol version {_short(proto)}")
        info = self._unpickle(bio, True)
        if not isinstance(info, dict):
            raise _Bad("malformed system-info record")
        little = info.get("little_endian", True)
        if type(little) is not bool:
            raise _Bad(f"little_endian is {_short(little)}, not True or False")
        self.part = "object pickle"
        obj = self._unpickle(bio, True)
        self.part = "storage key list"
        keys = self._unpickle(bio, True)
        if not isinstance(keys, list) or not all(type(k) in (str, int) for k in keys):
            raise _Bad("malformed storage key list")
        view = memoryview(data)
        pos = bio.tell()
        buffers = {}
        for key in keys:
            key = str(key)
            self.part = f"storage {key!r}"
            ref = self.storages.get(key)
            if ref is None:
                raise _Bad("listed but never used by the object pickle")
            if key in buffers:
                raise _Bad("listed twice")
            if pos + 8 > len(data):
                raise _Bad("file ends before its element count (truncated file?)")
            (numel,) = struct.unpack("<q" if little else ">q", data[pos:pos + 8])
            pos += 8
            if numel != ref.numel:
                raise _Bad(f"holds {numel} elements, the pickle said {ref.numel}")
            if pos + ref.nbytes > len(data):
                raise _Bad(f"truncated: {len(data) - pos} of {ref.nbytes} bytes in the file")
            buffers[key] = view[pos:pos + ref.nbytes]
            pos += ref.nbytes
        self.part = "object graph"
        arrays = {}
        for ref, group in _by_storage(self._walk_check(obj)):
            raw = buffers.get(ref.key)
            if raw is None:
                self.part = f"tensor {group[0][1].name!r}"
                raise _Bad(f"{ref!r} has no data in the file (not in the storage key list)")
            for tid, t in group:
                arrays[tid] = self._materialise(t, raw, little)
        return obj, arrays

    def _member(self, zf, zinfo, limit=None):
        if zinfo.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _Bad(f"compression method {zinfo.compress_type} (PyTorch writes stored "
                       "or deflated members only)")
        if (zinfo.compress_type == zipfile.ZIP_DEFLATED
                and zinfo.file_size > _MAX_RATIO * zinfo.compress_size + (1 << 20)):
            raise _Bad(f"{zinfo.file_size} bytes deflated into {zinfo.compress_size}: more "
                       f"than {_MAX_RATIO}:1 is a zip bomb, not weights (PyTorch stores its "
                       "members uncompressed)")
        if limit is not None and zinfo.file_size > limit:
            raise _Bad(f"{zinfo.file_size} bytes, at most {limit} expected")
        self._spend(zinfo.file_size, f"{zinfo.filename!r}")
        return zf.read(zinfo)

    def _read_zip(self, f):
        self.part = "zip archive"
        with zipfile.ZipFile(f) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            pkls = [n for n in infos if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pkls) != 1:
                raise _Bad("zip archive without a single <dir>/data.pkl (not a PyTorch file)")
            prefix = pkls[0][: -len("data.pkl")]
            little = True
            if prefix + "byteorder" in infos:
                self.part = f"{prefix}byteorder"
                order = self._member(zf, infos[prefix + "byteorder"], 16)
                order = order.decode("ascii", "replace").strip()
                if order not in ("little", "big"):
                    raise _Bad(f"unknown byte order {order!r}")
                little = order == "little"
            self.part = f"{pkls[0]} (the object pickle)"
            obj = self._unpickle(io.BytesIO(self._member(zf, infos[pkls[0]])), False)
            self.part = "object graph"
            arrays = {}
            # one storage in memory at a time: its tensors are copied out, then it goes
            for ref, group in _by_storage(self._walk_check(obj)):
                member = f"{prefix}data/{ref.key}"
                self.part = f"storage {ref.key!r} ({member})"
                if member not in infos:
                    raise _Bad("storage file missing")
                info = infos[member]
                if info.file_size < ref.nbytes:
                    raise _Bad(f"has {info.file_size} bytes, needs {ref.nbytes} "
                               "(truncated file?)")
                raw = memoryview(self._member(zf, info))[:ref.nbytes]
                for tid, t in group:
                    arrays[tid] = self._materialise(t, raw, little)
                del raw
        return obj, arrays

    # -- the walk -----------------------------------------------------------------------------

    def _walk_check(self, root):
        """Check the object graph without allocating any array: depth, size, cycles,
        what it holds, each tensor's geometry and the bytes all of them will take.
        Returns {id(lazy tensor or bare storage): _Tensor}; remembers the containers in
        post-order (children first) for _rebuild."""
        state = {}  # id(container) -> 1 while its children are walked, 2 when done
        self.order = []
        tensors = {}
        nodes = 0
        stack = [(root, None, 0, False)]
        while stack:
            obj, chain, depth, leaving = stack.pop()
            if leaving:
                state[id(obj)] = 2
                self.order.append(obj)
                continue
            nodes += 1
            if nodes > MAX_NODES:
                raise _Bad(f"more than {MAX_NODES:,} objects (references) in the object "
                           "graph")
            t = type(obj)
            if t in _LEAVES or t is _Dtype:
                continue
            if t is _LazyTensor or t is _StorageRef:
                if id(obj) not in tensors:
                    self.part = f"tensor {_path_name(chain)!r}"
                    tensors[id(obj)] = self._check_tensor(obj, _path_name(chain))
                continue
            if t not in _CONTAINERS:
                self.part = f"object graph at {_path_name(chain)!r}"
                raise _Bad(f"holds {_short(obj)} ({t.__name__}), which a weight file "
                           "cannot hold as a value")
            s = state.get(id(obj))
            if s == 2:
                continue
            if s == 1:
                self.part = f"object graph at {_path_name(chain)!r}"
                raise _Bad("the object graph has a cycle (a container holds itself)")
            if depth >= MAX_DEPTH:
                self.part = f"object graph at {_path_name(chain)!r}"
                raise _Bad(f"containers nested more than {MAX_DEPTH} deep")
            state[id(obj)] = 1
            stack.append((obj, chain, depth, True))
            if t is dict or t is collections.OrderedDict:
                for k in obj:
                    if not _key_ok(k):
                        self.part = f"object graph at {_path_name(chain)!r}"
                        raise _Bad(f"a dict key is {_short(k)} ({type(k).__name__}); keys "
                                   "must be strings, numbers or tuples of them")
                items = list(obj.items())
                for k, v in reversed(items):
                    stack.append((v, (chain, k), depth + 1, False))
            elif t is set or t is frozenset:
                for v in obj:
                    if not _key_ok(v):
                        self.part = f"object graph at {_path_name(chain)!r}"
                        raise _Bad(f"a set holds {_short(v)}; sets may hold only strings, "
                                   "numbers or tuples of them")
            else:
                for i in range(len(obj) - 1, -1, -1):
                    stack.append((obj[i], (chain, i), depth + 1, False))
        return tensors

    def _check_tensor(self, obj, name):
        if type(obj) is _StorageRef:  # a bare storage: its elements as a 1-D array
            ref, code, size, stride, off = obj, obj.code, (obj.numel,), (1,), 0
        else:
            ref, code = obj.storage, obj.code
            size, stride, off = obj.size, obj.stride, obj.offset
            if type(ref) is not _StorageRef:
                raise _Bad(f"rebuilt from {_short(ref)}, which is not a storage")
            if code is None:
                code = ref.code
        code = code or "u1"  # an untyped storage read as bytes
        item = _ITEMSIZE[code]
        if ref.nbytes % item:
            raise _Bad(f"{ref!r} holds {ref.nbytes} bytes, not a whole number of "
                       f"{item}-byte {_CODE_NAMES[code]} elements")
        elements = ref.nbytes // item
        ok = (type(size) in (tuple, list) and type(stride) in (tuple, list)
              and len(size) == len(stride) <= _MAX_NDIM and type(off) is int and off >= 0
              and all(type(v) is int and 0 <= v <= _MAX_EXTENT for v in size)
              and all(type(v) is int and 0 <= v <= _MAX_EXTENT for v in stride))
        if not ok:
            raise _Bad(f"bad geometry: size={_short(size)} stride={_short(stride)} "
                       f"offset={_short(off)} (non-negative ints, at most {_MAX_NDIM} dims)")
        size, stride = tuple(size), tuple(stride)
        extent = item
        for n in size:
            extent *= max(n, 1)
            if extent > _MAX_EXTENT:
                raise _Bad(f"size {size} is too large to be an array")
        numel = 1
        for n in size:
            numel *= n
        if numel:
            last = off + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= elements:
                raise _Bad(f"size {size} with strides {stride} at offset {off} reads past "
                           f"the {elements} elements of {ref!r} (truncated file?)")
        out_item = 4 if code == "bf16" or (self.float32 and code[0] == "f") else item
        self._spend(numel * out_item, f"a {_CODE_NAMES[code]} array of size {size}")
        t = _Tensor()
        t.ref, t.code, t.size, t.stride, t.offset, t.elements, t.name = (
            ref, code, size, stride, off, elements, name)
        return t

    def _materialise(self, t, raw, little):
        self.part = f"tensor {t.name!r}"
        dt = _np_dtype(t.code, little)
        if 0 in t.size:
            arr = np.zeros(t.size, dtype=dt)
        else:
            flat = np.frombuffer(raw, dtype=dt, count=t.elements)
            strides = tuple(s * dt.itemsize if n > 1 else 0 for n, s in zip(t.size, t.stride))
            arr = np.lib.stride_tricks.as_strided(flat[t.offset:], shape=t.size,
                                                  strides=strides)
        if t.code == "bf16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        native = arr.dtype.newbyteorder("=") if arr.dtype.itemsize > 1 else arr.dtype
        arr = np.array(arr, dtype=native, order="C", copy=True)
        if self.float32 and arr.dtype.kind == "f" and arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        return arr

    def _rebuild(self, root, out):
        """The object with every tensor replaced by its array (out: id -> array)."""
        self.part = "object graph"

        def conv(v):
            t = type(v)
            if t is _Dtype:
                return _CODE_NAMES[v.code]
            if t in _LEAVES:
                return v
            return out[id(v)]

        for obj in self.order:  # children before parents; each container once
            t = type(obj)
            if t is list:
                new = [conv(v) for v in obj]
            elif t is tuple:
                new = tuple(conv(v) for v in obj)
            elif t is dict:
                new = {k: conv(v) for k, v in obj.items()}
            elif t is collections.OrderedDict:
                new = collections.OrderedDict((k, conv(v)) for k, v in obj.items())
            else:  # set / frozenset: only scalars (checked), fresh from this load
                new = obj
            out[id(obj)] = new
        return conv(root)

    # -- entry --------------------------------------------------------------------------------

    def _read(self, f):
        size = os.fstat(f.fileno()).st_size
        if self.max_bytes is None:
            self.max_bytes = 4 * size + _DEFAULT_SLACK
        head = f.read(4)
        f.seek(0)
        if head[:2] == b"PK":
            obj, arrays = self._read_zip(f)
        elif head[:1] == b"\x80":
            obj, arrays = self._read_legacy(f, size)
        elif len(head) == 0:
            raise _Bad("empty file")
        else:
            raise _Bad("not a PyTorch checkpoint (neither a zip archive nor a legacy "
                       "pickle stream)")
        return self._rebuild(obj, arrays)

    def run(self):
        with open(self.path, "rb") as f:  # OSError (FileNotFoundError, ...) as it is
            try:
                return self._read(f)
            except _Bad as e:
                msg = str(e)
            except OSError as e:
                # a damaged zip can make zipfile seek to a negative offset (EINVAL) and
                # decompressors raise OSError without errno: content, not I/O
                if e.errno not in (None, errno.EINVAL, errno.EOVERFLOW):
                    raise type(e)(e.errno, f"cannot read {self.path} ({self.part}): "
                                           f"{e.strerror or _exc_text(e)}") from None
                msg = f"malformed ({type(e).__name__}: {_exc_text(e)})"
            except MemoryError:
                msg = ("needs more memory than this machine has (MemoryError: a damaged "
                       "size field?)")
            except RecursionError:
                msg = "nested too deeply (RecursionError)"
            except (pickle.UnpicklingError, EOFError) as e:
                msg = f"not a valid pickle ({type(e).__name__}: {_exc_text(e)})"
            except zipfile.BadZipFile as e:
                msg = f"damaged zip archive ({_exc_text(e)})"
            except Exception as e:  # noqa: BLE001 -- hostile input: every error is the file's
                msg = f"malformed ({type(e).__name__}: {_exc_text(e)})"
        raise TorchFileError(f"{self.path}: {self.part}: {msg}")


def load(path, float32=True, *, max_bytes=None):
    """Read a ``torch.save`` file. Returns the saved object with every tensor replaced by
    a NumPy array (OrderedDict, dict, list, tuple, set containers are kept; objects the
    file shares stay shared).
    float32: convert floating tensors to float32 (default); False keeps their dtype
    (bfloat16 becomes float32 either way: NumPy has no bfloat16).
    max_bytes: the most the arrays (and, for a zip, the storages read) may take; by
    default 4 x the file's size + 64 MiB.
    Raises TorchFileError (a ValueError) naming the file and the part for any content
    it cannot read, OSError when the file cannot be read at all."""
    path = os.fspath(path)
    if max_bytes is not None and (type(max_bytes) is not int or max_bytes < 0):
        raise TypeError(f"max_bytes must be a non-negative int, got {max_bytes!r}")
    return _Reader(path, float32, max_bytes).run()


def load_state_dict(path, float32=True, *, max_bytes=None):
    """Read a checkpoint holding a state dict and return it as a plain dict
    name -> array. A checkpoint that wraps it (``{"state_dict": ...}`` or
    ``{"model": ...}``) is unwrapped; non-tensor entries raise TorchFileError."""
    path = os.fspath(path)
    obj = load(path, float32, max_bytes=max_bytes)
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise TorchFileError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, np.ndarray):
            raise TorchFileError(f"{path}: entry {_short(k)} is a {type(v).__name__}, "
                                 "not a tensor")
        out[str(k)] = v
    return out
