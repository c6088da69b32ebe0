"""The packed dataset file: aligned uint8 crops plus labels, written once, memory-mapped after.

Layout (all integers little-endian; every section starts on a 64-byte boundary):

    offset 0   8 bytes   magic b"GLAEPACK"
    offset 8   u32       format version (1)
    offset 12  u32       reserved (0)
    offset 16  u64       header offset (where the JSON header starts)
    offset 24  u64       header length in bytes
    offset 32  32 bytes  reserved (0)
    offset 64  images    uint8 (N, S, S, 3), HWC, RGB
    ...        ages      float32 (N,)
    ...        sigmas    float32 (N,)          NaN where the data set gives none
    ...        ids       int64 (N,)            -1: identity unknown
    ...        hashes    uint8 (N, 32)         sha256, see HASH_KIND
    ...        paths     UTF-8 JSON array of N strings (the source of each crop)
    ...        header    UTF-8 JSON: version, n, size, sections {name: [offset, nbytes]},
                         hash kind, free-form meta (how it was prepared)

The images come first so a writer can stream them without knowing N in advance; the
header comes last (like a zip's central directory) and the fixed prefix points to it. A
file is written under a temporary name in the same folder and os.replace'd into place, so
a reader never sees a half-written file under the final name.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np

__all__ = ["HASH_KIND", "MAGIC", "VERSION", "PackedDataset", "PackedFormatError", "PackedWriter",
           "pixel_hash", "write_packed"]

MAGIC = b"GLAEPACK"
VERSION = 1
_PREFIX = struct.Struct("<8sIIQQ32x")  # 64 bytes
_ALIGN = 64
HASH_KIND = "sha256 of the decoded source image: uint32 LE height, width, then its RGB uint8 pixels"
_SECTIONS = ("images", "ages", "sigmas", "identities", "hashes", "paths")


class PackedFormatError(ValueError):
    """A file that is not a glae packed dataset, or one that is truncated or inconsistent."""


def pixel_hash(img: np.ndarray) -> bytes:
    """sha256 over (height, width) and the RGB pixels of a decoded image (HASH_KIND): two
    files with the same pixels (byte-identical copies, or the same image re-saved with other
    metadata) get the same hash."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h = hashlib.sha256(struct.pack("<II", img.shape[0], img.shape[1]))
    h.update(memoryview(img).cast("B"))
    return h.digest()


def _pad(f):
    pos = f.tell()
    if pos % _ALIGN:
        f.write(b"\0" * (_ALIGN - pos % _ALIGN))
    return f.tell()


class PackedWriter:
    """Streams crops into a packed file; use as a context manager. On an exception inside
    the `with` block the temporary file is removed and the target is left untouched.

        with PackedWriter(out, size=224, meta={...}) as w:
            w.append(crop, age, sigma=None, identity=-1, path="...", hash=b"...")
    """

    def __init__(self, path, size: int, meta: dict | None = None):
        size = int(size)
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.path = os.fspath(path)
        self.size = size
        self.meta = dict(meta or {})
        d = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(d):
            raise FileNotFoundError(f"output folder not found: {d}")
        self.tmp = f"{self.path}.tmp-{os.getpid()}-{id(self):x}"
        self._f = open(self.tmp, "wb")
        self._f.write(b"\0" * _PREFIX.size)  # real prefix written at close
        self.ages, self.sigmas, self.ids, self.hashes, self.paths = [], [], [], [], []
        self._done = False

    def __len__(self):
        return len(self.ages)

    def append(self, image, age, sigma=None, identity=None, path="", hash=None):
        img = np.asarray(image)
        want = (self.size, self.size, 3)
        if img.dtype != np.uint8 or img.shape != want:
            raise ValueError(f"image must be uint8 {want}, got {img.dtype} {img.shape}")
        h = pixel_hash(img) if hash is None else bytes(hash)
        if len(h) != 32:
            raise ValueError(f"hash must be 32 bytes (sha256), got {len(h)}")
        self._f.write(np.ascontiguousarray(img).tobytes())
        self.ages.append(float(age))
        self.sigmas.append(np.nan if sigma is None else float(sigma))
        self.ids.append(-1 if identity is None else int(identity))
        self.hashes.append(h)
        self.paths.append(str(path))

    def close(self):
        if self._done:
            return
        f = self._f
        n = len(self.ages)
        sections = {"images": [_PREFIX.size, f.tell() - _PREFIX.size]}
        blobs = [
            ("ages", np.asarray(self.ages, dtype="<f4").tobytes()),
            ("sigmas", np.asarray(self.sigmas, dtype="<f4").tobytes()),
            ("identities", np.asarray(self.ids, dtype="<i8").tobytes()),
            ("hashes", b"".join(self.hashes)),
            ("paths", json.dumps(self.paths, ensure_ascii=False).encode("utf-8")),
        ]
        for name, blob in blobs:
            off = _pad(f)
            f.write(blob)
            sections[name] = [off, len(blob)]
        header = {"format": "glae-packed", "version": VERSION, "n": n, "size": self.size, "channels": 3,
                  "layout": "NHWC uint8 RGB", "hash": HASH_KIND, "sections": sections, "meta": self.meta}
        hblob = json.dumps(header, ensure_ascii=False, default=_json_default).encode("utf-8")
        hoff = _pad(f)
        f.write(hblob)
        f.seek(0)
        f.write(_PREFIX.pack(MAGIC, VERSION, 0, hoff, len(hblob)))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(self.tmp, self.path)
        self._done = True

    def abort(self):
        if not self._done:
            self._f.close()
            if os.path.exists(self.tmp):
                os.remove(self.tmp)
            self._done = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_packed(path, images, ages, sigmas=None, identities=None, paths=None, hashes=None,
                 meta: dict | None = None) -> str:
    """Write arrays already in memory as a packed file. images uint8 (N, S, S, 3); ages (N,);
    sigmas (N,) or None (NaN); identities (N,) or None (-1); paths: N strings or None;
    hashes: (N, 32) uint8 or None (computed from the crops with pixel_hash)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be uint8 (N, S, S, 3), got {images.dtype} {images.shape}")
    n = images.shape[0]
    ages = np.asarray(ages, dtype=np.float64).reshape(-1)

    def check(name, a):
        if a is not None and len(a) != n:
            raise ValueError(f"{name} has {len(a)} entries, images has {n}")

    for name, a in (("ages", ages), ("sigmas", sigmas), ("identities", identities), ("paths", paths),
                    ("hashes", hashes)):
        check(name, a)
    with PackedWriter(path, images.shape[1], meta=meta) as w:
        for i in range(n):
            w.append(images[i], ages[i],
                     sigma=None if sigmas is None or not np.isfinite(sigmas[i]) else sigmas[i],
                     identity=None if identities is None else identities[i],
                     path="" if paths is None else paths[i],
                     hash=None if hashes is None else np.asarray(hashes[i], dtype=np.uint8).tobytes())
    return os.fspath(path)


class PackedDataset:
    """A packed file opened for reading. `images` is a read-only np.memmap (N, S, S, 3):
    nothing is copied until a batch is indexed. ages float32, sigmas float32 (NaN: none),
    identities int64 (-1: unknown), hashes uint8 (N, 32), paths list of str, meta dict.

    subset(indices) gives a view on the same memmap restricted to `indices` (in that order);
    its `images` is then an indexable view, and `base_images` / `indices` give the full
    memmap and the positions in it (what a C loader takes)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"packed dataset not found: {self.path}")
        fsize = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            prefix = f.read(_PREFIX.size)
            if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
                raise PackedFormatError(f"{self.path}: not a glae packed dataset (bad magic)")
            _, version, _, hoff, hlen = _PREFIX.unpack(prefix)
            if version != VERSION:
                raise PackedFormatError(f"{self.path}: format version {version}, this glae reads {VERSION}")
            if hoff == 0 or hoff + hlen != fsize:
                raise PackedFormatError(f"{self.path}: truncated or incomplete file: header at {hoff}+{hlen}, "
                                        f"file has {fsize} bytes")
            f.seek(hoff)
            try:
                header = json.loads(f.read(hlen).decode("utf-8"))
                n, size, sec = int(header["n"]), int(header["size"]), header["sections"]
                self._meta = header.get("meta", {})
                self.hash_kind = header.get("hash", "")
            except (ValueError, KeyError, TypeError) as e:
                raise PackedFormatError(f"{self.path}: corrupt header: {e}") from None
            want = {"images": n * size * size * 3, "ages": 4 * n, "sigmas": 4 * n, "identities": 8 * n,
                    "hashes": 32 * n}
            for name in _SECTIONS:
                if name not in sec:
                    raise PackedFormatError(f"{self.path}: corrupt header: no section {name!r}")
                off, nb = sec[name]
                if name in want and nb != want[name]:
                    raise PackedFormatError(f"{self.path}: section {name} has {nb} bytes, expected {want[name]}")
                if off < _PREFIX.size or off + nb > hoff:
                    raise PackedFormatError(f"{self.path}: section {name} lies outside the data area")

            def arr(name, dtype):
                off, nb = sec[name]
                f.seek(off)
                return np.frombuffer(f.read(nb), dtype=dtype).copy()

            self.ages = arr("ages", "<f4").astype(np.float32)
            self.sigmas = arr("sigmas", "<f4").astype(np.float32)
            self.identities = arr("identities", "<i8").astype(np.int64)
            self.hashes = arr("hashes", np.uint8).reshape(n, 32)
            off, nb = sec["paths"]
            f.seek(off)
            try:
                self.paths = json.loads(f.read(nb).decode("utf-8"))
            except ValueError as e:
                raise PackedFormatError(f"{self.path}: corrupt paths block: {e}") from None
            if len(self.paths) != n:
                raise PackedFormatError(f"{self.path}: {len(self.paths)} paths for {n} images")
        self.size = size
        if n > 0:
            self.base_images = np.memmap(self.path, dtype=np.uint8, mode="r", offset=sec["images"][0],
                                         shape=(n, size, size, 3))
        else:
            self.base_images = np.zeros((0, size, size, 3), np.uint8)
        self.indices = None  # None: the whole file

    # -- views --------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        return self._meta

    # prepare stores the alignment it used; inference must align raw photos the same way
    # (Model.predict_faces(..., align_size=ds.align_size, margin=ds.align_margin))
    @property
    def align_size(self) -> int | None:
        """Crop side in pixels prepare aligned the faces at (its `size`), or None when the
        file was not written by prepare (write_packed, synthetic data: no alignment known)."""
        if "margin" not in self._meta:
            return None
        return int(self._meta.get("size", self.size))

    @property
    def align_margin(self) -> float | None:
        """The `margin` prepare passed to align_face, or None when the file was not written
        by prepare. Only the images aligned with landmarks (meta n_aligned_with_landmarks)
        used it; the others were centre-cropped."""
        if "margin" not in self._meta:
            return None
        return float(self._meta["margin"])

    def __len__(self):
        return len(self.ages)

    @property
    def images(self):
        if self.indices is None:
            return self.base_images
        return _IndexedImages(self.base_images, self.indices)

    def subset(self, indices) -> "PackedDataset":
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean indices must have shape ({len(self)},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for a dataset of {len(self)}")
        idx = np.where(idx < 0, idx + len(self), idx)
        sub = object.__new__(PackedDataset)
        sub.__dict__.update(self.__dict__)
        base = np.arange(len(self)) if self.indices is None else self.indices
        sub.indices = base[idx]
        sub.ages, sub.sigmas = self.ages[idx], self.sigmas[idx]
        sub.identities, sub.hashes = self.identities[idx], self.hashes[idx]
        sub.paths = [self.paths[i] for i in idx]
        return sub

    def write(self, path) -> str:
        """This data set (a subset too) as a packed file of its own: its crops, ages, sigmas,
        identities, paths and hashes, and the header facts of the file it came from
        (prepare's size, margin, landmark counts: what the Trainer records for inference).
        The way to turn a protocol's split into train/test files."""
        with PackedWriter(path, self.size, meta=self.meta) as w:
            for i in range(len(self)):
                s, ident = self.sigmas[i], int(self.identities[i])
                w.append(self.images[i], self.ages[i], sigma=None if np.isnan(s) else s,
                         identity=None if ident < 0 else ident, path=self.paths[i],
                         hash=self.hashes[i].tobytes())
        return os.fspath(path)

    def hash_hex(self, i) -> str:
        return self.hashes[i].tobytes().hex()

    def __repr__(self):
        return f"PackedDataset({self.path!r}, n={len(self)}, size={self.size})"


class _IndexedImages:
    """images[i] of a subset, mapped through its indices into the file's memmap."""

    def __init__(self, base, indices):
        self.base, self.indices = base, indices
        self.dtype = base.dtype
        self.shape = (len(indices),) + base.shape[1:]
        self.ndim = base.ndim

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self.base[(self.indices[key[0]],) + key[1:]]
        return self.base[self.indices[key]]

    def __array__(self, dtype=None, copy=None):
        a = self.base[self.indices]
        return a if dtype is None else a.astype(dtype)
