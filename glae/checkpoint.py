"""Checkpoints in the safetensors layout, so the ``safetensors`` package and PyTorch users
can read glae's weights and glae can read theirs.

File layout (https://github.com/huggingface/safetensors, "Format"):

    8 bytes    N, unsigned little-endian: the length of the header
    N bytes    JSON header, UTF-8, padded with spaces:
               {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                ..., "__metadata__": {"<key>": "<string>", ...}}
    rest       the tensors' bytes, little-endian, C order; offsets count from the first
               byte after the header and tile the rest of the file exactly

glae's metadata values can be any JSON value (a config dict, the training state): each is
stored as a JSON string, and the key ``__glae__`` marks such a file so that ``load`` decodes
them again. A file written by someone else (no ``__glae__`` key) gives its metadata back as
the plain strings it holds.

The ``__glae__`` entry also holds CRC-32s (``zlib.crc32``) that ``load`` checks:

* ``crc32``: each tensor's data bytes -- a file whose data was damaged is refused, naming
  the tensor, instead of loading weights that turn into NaN later;
* ``meta_crc32``: each metadata entry's stored JSON string -- a changed digit in the
  config (momentum, a learning rate, the epochs, the projection width) or the trainer
  state is refused, naming the entry, instead of training on with a silently other run;
* ``header_crc32``: the rest of the header -- every tensor's dtype, shape and offsets,
  the two tables above and the format version -- so a shape or dtype edited in place
  (same bytes, other meaning) is refused too.

Files written before a table existed still load: without ``crc32`` their data, without
``meta_crc32``/``header_crc32`` their header is unverified, and ``load`` says so in one
line (an :class:`UnverifiedCheckpointWarning`). A file that has one of the two header
tables but not the other is damaged, and refused. Files written by others (no
``__glae__`` entry) have no checksums to check.

Writes are atomic: a temporary file in the same folder, fsync'd, then ``os.replace``'d over
the target, so a crash leaves either the old checkpoint or the new one, never half of one.
"""
import json
import os
import struct
import secrets
import warnings
import zlib

import numpy as np

__all__ = ["CheckpointError", "UnverifiedCheckpointWarning", "save", "load"]

# safetensors dtype name <-> numpy dtype (little-endian)
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {(dt.kind, dt.itemsize): name for name, dt in _DTYPES.items()}

_MAGIC_KEY = "__glae__"
_FORMAT_VERSION = 1
_MAX_HEADER = 100_000_000  # the limit the safetensors library enforces


class CheckpointError(ValueError):
    """A file that is not a valid checkpoint: truncated, foreign, or corrupted."""


class UnverifiedCheckpointWarning(UserWarning):
    """A glae checkpoint written before the checksums over its header existed: loaded,
    but its metadata (config, trainer state) and tensor table are unverified."""


def _dtype_name(a, name):
    key = (a.dtype.kind, a.dtype.itemsize)
    if key not in _NAMES:
        raise CheckpointError(
            f"tensor {name!r}: dtype {a.dtype} cannot be stored "
            f"(supported: {', '.join(str(np.dtype(d)) for d in _DTYPES.values())})")
    return _NAMES[key]


def _crc(buf):
    return zlib.crc32(buf) & 0xFFFFFFFF


def _header_crc(table, crcs, meta_crcs, version):
    """CRC-32 of the header's tensor table {name: [dtype, shape, [begin, end]]}, the two
    checksum tables and the format version, in one canonical JSON form."""
    doc = {"tensors": table, "crc32": crcs, "meta_crc32": meta_crcs, "version": version}
    return _crc(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def _encode_metadata(metadata, crcs, table):
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    out = {}
    for k, v in metadata.items():
        if not isinstance(k, str):
            raise TypeError(f"metadata keys must be str, got {k!r}")
        if k == _MAGIC_KEY:
            raise ValueError(f"metadata key {_MAGIC_KEY!r} is reserved")
        try:
            out[k] = json.dumps(v, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise TypeError(f"metadata[{k!r}] is not JSON-serialisable: {e}") from None
    meta_crcs = {k: _crc(v.encode("utf-8")) for k, v in out.items()}
    out[_MAGIC_KEY] = json.dumps(
        {"version": _FORMAT_VERSION, "crc32": crcs, "meta_crc32": meta_crcs,
         "header_crc32": _header_crc(table, crcs, meta_crcs, _FORMAT_VERSION)},
        sort_keys=True)
    return out


def _write_array(f, a):
    """Write one little-endian C-order array (split out so tests can simulate a crash)."""
    f.write(a.reshape(-1).view(np.uint8).data)


def save(path, tensors, metadata=None):
    """Write ``tensors`` (dict of str -> numpy.ndarray) and ``metadata`` (dict of str ->
    any JSON value) to ``path`` atomically. Supported dtypes: float64, float32, float16,
    int64, int32, int16, int8, uint8, bool."""
    if not isinstance(tensors, dict):
        raise TypeError(f"tensors must be a dict, got {type(tensors).__name__}")
    arrays = {}
    for name, a in tensors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"tensor names must be non-empty str, got {name!r}")
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved and cannot name a tensor")
        if not isinstance(a, np.ndarray):
            raise TypeError(f"tensor {name!r} must be a numpy.ndarray, got {type(a).__name__}")
        dname = _dtype_name(a, name)
        arrays[name] = (dname, a.astype(_DTYPES[dname], order="C", copy=False))

    # widest dtypes first, then by name (the order safetensors itself writes): with the
    # header padded to 8 bytes, every tensor starts at a multiple of its item size
    order = sorted(arrays, key=lambda n: (-arrays[n][1].itemsize, n))
    header, offset = {}, 0
    for name in order:
        dname, a = arrays[name]
        header[name] = {"dtype": dname, "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    crcs = {name: _crc(arrays[name][1].reshape(-1).view(np.uint8)) for name in order}
    table = {name: [h["dtype"], h["shape"], h["data_offsets"]] for name, h in header.items()}
    header["__metadata__"] = _encode_metadata(metadata, crcs, table)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    # O_EXCL on a fresh random name (mode 0o666 minus the umask, like a plain open)
    tmp = os.path.join(
        folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:  # name the file asked for, not the temporary one
        what = "folder not found" if not os.path.isdir(folder) else e.strerror
        raise OSError(e.errno, f"cannot write {path}: {what}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(hbytes)))
            f.write(hbytes)
            for name in order:
                _write_array(f, arrays[name][1])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno is not None:  # a full disk: name the file
            raise type(e)(e.errno, f"cannot write {path}: {e.strerror} (the previous file, if "
                                   "any, is unchanged)") from None
        raise
    _fsync_dir(folder)


def _fsync_dir(folder):
    """Make the rename itself durable (POSIX); best effort where directories cannot be
    opened."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise CheckpointError(f"duplicate key {k!r} in the header")
        d[k] = v
    return d


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_header(raw, path, data_len):
    where = f"{path}: "
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(
            where + "not a safetensors checkpoint (header is not UTF-8)") from None
    if not text.startswith("{"):
        raise CheckpointError(where + "not a safetensors checkpoint (header is not a JSON object)")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except CheckpointError as e:
        raise CheckpointError(where + str(e)) from None
    except ValueError as e:
        raise CheckpointError(where + f"corrupted header (invalid JSON: {e})") from None
    except RecursionError:
        raise CheckpointError(where + "corrupted header (JSON nested too deeply)") from None
    if not isinstance(header, dict):
        raise CheckpointError(where + "corrupted header (not a JSON object)")

    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise CheckpointError(where + "__metadata__ must map strings to strings")

    entries = []
    for name, info in header.items():
        w = where + f"tensor {name!r}: "
        if not isinstance(info, dict):
            raise CheckpointError(w + "entry is not a JSON object")
        missing = {"dtype", "shape", "data_offsets"} - info.keys()
        if missing:
            raise CheckpointError(w + f"missing {', '.join(sorted(missing))}")
        dname, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dname not in _DTYPES:
            raise CheckpointError(w + f"unsupported dtype {dname!r} "
                                  f"(supported: {', '.join(_DTYPES)})")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise CheckpointError(w + f"shape must be a list of non-negative ints, got {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs)
                or not 0 <= offs[0] <= offs[1]):
            raise CheckpointError(w + f"data_offsets must be [begin, end] with "
                                  f"0 <= begin <= end, got {offs!r}")
        if offs[1] > data_len:
            raise CheckpointError(w + f"data ends at byte {offs[1]} but the file holds only "
                                  f"{data_len} data bytes (truncated file?)")
        numel = 1
        for s in shape:
            numel *= s
        nbytes = numel * _DTYPES[dname].itemsize
        if offs[1] - offs[0] != nbytes:
            raise CheckpointError(w + f"data_offsets {offs} span {offs[1] - offs[0]} bytes but "
                                  f"shape {shape} of {dname} needs {nbytes}")
        entries.append((offs[0], offs[1], name, dname, tuple(shape)))

    # the tensors must tile the data section: no overlap, no hole, nothing after the end
    entries.sort()
    pos = 0
    for b, e, name, _, _ in entries:
        if b != pos:
            raise CheckpointError(where + f"tensor {name!r} starts at byte {b}, expected {pos} "
                                  "(tensors overlap or leave a hole)")
        pos = e
    if pos != data_len:
        raise CheckpointError(where + f"the tensors cover {pos} data bytes but the file holds "
                              f"{data_len} (trailing bytes)")
    return entries, meta


def _crc_table(info, key, path):
    t = info.get(key)
    if t is not None and not (isinstance(t, dict) and all(_is_int(v) for v in t.values())):
        raise CheckpointError(f"{path}: corrupted {_MAGIC_KEY} metadata entry ({key})")
    return t


def _decode_metadata(meta, entries, path):
    """(metadata, {tensor: CRC-32} or None when the file has none). Checks the metadata
    entries and the tensor table against their checksums first (when the file has them)."""
    if _MAGIC_KEY not in meta:
        return dict(meta), None  # a foreign safetensors file: plain strings
    try:
        info = json.loads(meta[_MAGIC_KEY])
        version = info["version"]
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise CheckpointError(f"{path}: corrupted {_MAGIC_KEY} metadata entry") from None
    if not _is_int(version) or version > _FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is newer than "
                              f"this glae understands ({_FORMAT_VERSION})")
    crcs = _crc_table(info, "crc32", path)  # absent in files written before checksums
    meta_crcs = _crc_table(info, "meta_crc32", path)  # absent before header checksums
    header_crc = info.get("header_crc32")
    if (meta_crcs is None) != (header_crc is None) or not (header_crc is None
                                                            or _is_int(header_crc)):
        raise CheckpointError(f"{path}: corrupted {_MAGIC_KEY} metadata entry (it holds one "
                              "of meta_crc32 and header_crc32 without the other)")
    names = [k for k in meta if k != _MAGIC_KEY]
    if meta_crcs is None:
        warnings.warn(f"{path}: written by an older glae without checksums over its "
                      f"{'header' if crcs is not None else 'header and tensors'}: loaded "
                      "unverified", UnverifiedCheckpointWarning, stacklevel=3)
    else:
        if set(meta_crcs) != set(names):
            extra = sorted(set(names) - set(meta_crcs))
            gone = sorted(set(meta_crcs) - set(names))
            raise CheckpointError(
                f"{path}: the metadata entries do not match the ones saved"
                + (f"; not saved: {', '.join(map(repr, extra))}" if extra else "")
                + (f"; missing: {', '.join(map(repr, gone))}" if gone else "")
                + " (the file is corrupted or was edited)")
        for k in names:
            if _crc(meta[k].encode("utf-8")) != meta_crcs[k]:
                raise CheckpointError(f"{path}: metadata entry {k!r} does not match the "
                                      "checksum saved with it (the file is corrupted or "
                                      "was edited)")
        table = {name: [dname, list(shape), [b, e]] for b, e, name, dname, shape in entries}
        if _header_crc(table, crcs, meta_crcs, version) != header_crc:
            raise CheckpointError(f"{path}: the tensor table (dtypes, shapes, offsets) or the "
                                  "checksums do not match the header checksum (the file is "
                                  "corrupted or was edited)")
    out = {}
    for k in names:
        try:
            out[k] = json.loads(meta[k])
        except ValueError:
            raise CheckpointError(f"{path}: metadata[{k!r}] is not valid JSON") from None
        except RecursionError:
            raise CheckpointError(f"{path}: metadata[{k!r}] is JSON nested too deeply "
                                  "to read") from None
    return out, crcs


def load(path):
    """Read a checkpoint written by ``save`` (or any safetensors file with supported dtypes).
    Returns (tensors: dict of str -> numpy.ndarray, fresh writable arrays in native byte
    order, metadata: dict). Raises CheckpointError (a ValueError) for a truncated, foreign
    or corrupted file, OSError when the file cannot be opened."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise CheckpointError(f"{path}: truncated or not a safetensors checkpoint "
                                  f"({size} bytes, shorter than the 8-byte header length)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n == 0 or n > _MAX_HEADER:
            raise CheckpointError(f"{path}: not a safetensors checkpoint (header length {n})")
        if n > size - 8:
            raise CheckpointError(f"{path}: truncated or not a safetensors checkpoint (header "
                                  f"length {n} exceeds the {size - 8} bytes that follow)")
        entries, meta = _parse_header(f.read(n), path, size - 8 - n)
        meta, crcs = _decode_metadata(meta, entries, path)
        if crcs is not None and set(crcs) != {e[2] for e in entries}:
            raise CheckpointError(f"{path}: the checksums do not name the file's tensors "
                                  "(corrupted header)")
        tensors = {}
        base = 8 + n
        for b, e, name, dname, shape in entries:
            buf = bytearray(e - b)
            f.seek(base + b)
            if e > b and f.readinto(buf) != e - b:
                raise CheckpointError(f"{path}: tensor {name!r}: file ended early (truncated)")
            if crcs is not None and _crc(buf) != crcs[name]:
                raise CheckpointError(f"{path}: tensor {name!r}: its bytes do not match the "
                                      "checksum saved with them (the file is corrupted)")
            a = np.frombuffer(buf, dtype=_DTYPES[dname]).reshape(shape)
            tensors[name] = a.astype(a.dtype.newbyteorder("="), copy=False)
    return tensors, meta
