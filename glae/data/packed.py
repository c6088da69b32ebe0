"""The packed dataset file: aligned uint8 crops plus labels, written once, memory-mapped after.

Layout (all integers little-endian; every section starts on a 64-byte boundary):

    offset 0   8 bytes   magic b"GLAEPACK"
    offset 8   u32       format version (1)
    offset 12  u32       reserved (0)
    offset 16  u64       header offset (where the JSON header starts)
    offset 24  u64       header length in bytes
    offset 32  u32       checksum flags: 1 = the file carries CRC-32s (0: an older file)
    offset 36  u32       CRC-32 of bytes 0..31 followed by the JSON header
    offset 40  24 bytes  reserved (0)
    offset 64  images    uint8 (N, S, S, 3), HWC, RGB
    ...        ages      float32 (N,)
    ...        sigmas    float32 (N,)          NaN where the data set gives none
    ...        ids       int64 (N,)            -1: identity unknown
    ...        hashes    uint8 (N, 32)         sha256, see HASH_KIND
    ...        paths     UTF-8 JSON array of N strings (the source of each crop)
    ...        image_crc32  uint32 LE, one CRC-32 per chunk of `image_chunk` images
    ...        header    UTF-8 JSON: version, n, size, sections {name: [offset, nbytes]},
                         hash kind, checksums {"crc32": {section: CRC-32 of its bytes},
                         "image_chunk": k}, free-form meta (how it was prepared)

Integrity (issue 17): the prefix CRC covers the fixed prefix and the header; the header's
checksums cover every section but the pixels, whose CRC-32s per chunk of images (one
image, or as many as fit in 64 KiB) sit in the image_crc32 section. PackedDataset checks all of them on open
(verify="full"), or the pixels chunk by chunk as a Trainer consumes them (verify="lazy").
Files written before the checksums (flags 0) still load, with one
UnverifiedPackedWarning line; their header fields are checked all the same.

The images come first so a writer can stream them without knowing N in advance; the
header comes last (like a zip's central directory) and the fixed prefix points to it. A
file is written under a temporary name in the same folder and os.replace'd into place, so
a reader never sees a half-written file under the final name.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import warnings
import zlib

import numpy as np

__all__ = ["HASH_KIND", "MAGIC", "VERSION", "PackedDataset", "PackedFormatError", "PackedWriter",
           "UnverifiedPackedWarning", "pixel_hash", "write_packed"]

MAGIC = b"GLAEPACK"
VERSION = 1
_PREFIX = struct.Struct("<8sIIQQII24x")  # 64 bytes
_ALIGN = 64
_FLAG_CRC = 1
# pixels per CRC-32: 224 px crops get one each (a lazily checked batch reads only its own
# images); small crops are grouped, so the full check is not a Python loop per tiny image
_CHUNK_BYTES = 1 << 16
HASH_KIND = "sha256 of the decoded source image: uint32 LE height, width, then its RGB uint8 pixels"
_SECTIONS = ("images", "ages", "sigmas", "identities", "hashes", "paths")
_MAX_HEADER = 1 << 30  # the JSON header (meta, identity names): far below this


class PackedFormatError(ValueError):
    """A file that is not a glae packed dataset, or one that is truncated, damaged or
    inconsistent. The message names the file and the part: `<path>: <part>: <what>`."""


class UnverifiedPackedWarning(UserWarning):
    """A packed file written before glae stored checksums in them: loaded unverified."""


def _image_chunk(size: int) -> int:
    return max(1, _CHUNK_BYTES // (size * size * 3))


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
        self._chunk = _image_chunk(size)
        self._crcs, self._crc = [], 0  # finished chunks' CRC-32s, the running one
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
        blob = np.ascontiguousarray(img).tobytes()
        self._f.write(blob)
        self._crc = zlib.crc32(blob, self._crc)
        if (len(self.ages) + 1) % self._chunk == 0:
            self._crcs.append(self._crc)
            self._crc = 0
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
        crcs = self._crcs + ([self._crc] if n % self._chunk else [])
        blobs.append(("image_crc32", np.asarray(crcs, dtype="<u4").tobytes()))
        for name, blob in blobs:
            off = _pad(f)
            f.write(blob)
            sections[name] = [off, len(blob)]
        checksums = {"crc32": {name: zlib.crc32(blob) for name, blob in blobs}, "image_chunk": self._chunk}
        header = {"format": "glae-packed", "version": VERSION, "n": n, "size": self.size, "channels": 3,
                  "layout": "NHWC uint8 RGB", "hash": HASH_KIND, "sections": sections,
                  "checksums": checksums, "meta": self.meta}
        hblob = json.dumps(header, ensure_ascii=False, default=_json_default).encode("utf-8")
        hoff = _pad(f)
        f.write(hblob)
        head = _PREFIX.pack(MAGIC, VERSION, 0, hoff, len(hblob), 0, 0)[:32]
        f.seek(0)
        f.write(_PREFIX.pack(MAGIC, VERSION, 0, hoff, len(hblob), _FLAG_CRC, zlib.crc32(hblob, zlib.crc32(head))))
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

    Every header field is checked (types, ranges, 64-byte alignment, sections inside the
    data area and not overlapping) and so is every checksum: the prefix and header, each
    label section, and the pixels either all at once (verify="full", the default: about
    one read of the file) or chunk by chunk the first time a Trainer or predict_dataset
    uses them (verify="lazy": Dataset.from_packed hands `verify_images` to the Trainer,
    which checks each batch's images before the step that consumes them). Damage is a
    PackedFormatError (a ValueError) naming the file and the part.

    subset(indices) gives a view on the same memmap restricted to `indices` (in that order);
    its `images` is then an indexable view, and `base_images` / `indices` give the full
    memmap and the positions in it (what a C loader takes)."""

    def __init__(self, path, verify: str = "full"):
        if verify not in ("full", "lazy"):
            raise ValueError(f"verify must be 'full' or 'lazy', got {verify!r}")
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise IsADirectoryError(f"packed dataset is a folder, not a file: {self.path}")
        if not os.path.isfile(self.path):
            if os.path.exists(self.path):
                raise PackedFormatError(f"{self.path}: not a regular file (a device or pipe)")
            raise FileNotFoundError(f"packed dataset not found: {self.path}")
        with open(self.path, "rb") as f:
            fsize = os.fstat(f.fileno()).st_size
            n, size, sec, header, crcs, chunk = self._read_header(f, fsize)
            self._meta = header.get("meta", {})
            self.hash_kind = header.get("hash", "")

            def raw(name):
                off, nb = sec[name]
                f.seek(off)
                blob = f.read(nb)
                if len(blob) != nb:
                    raise PackedFormatError(f"{self.path}: section {name!r}: truncated")
                if crcs is not None and zlib.crc32(blob) != crcs[name]:
                    raise PackedFormatError(f"{self.path}: section {name!r}: its bytes do not match the "
                                            "checksum saved with them (the file is corrupted)")
                return blob

            self.ages = np.frombuffer(raw("ages"), "<f4").astype(np.float32)
            self.sigmas = np.frombuffer(raw("sigmas"), "<f4").astype(np.float32)
            self.identities = np.frombuffer(raw("identities"), "<i8").astype(np.int64)
            self.hashes = np.frombuffer(raw("hashes"), np.uint8).reshape(n, 32).copy()
            try:
                self.paths = json.loads(raw("paths").decode("utf-8"))
            except (ValueError, RecursionError) as e:
                raise PackedFormatError(f"{self.path}: section 'paths': not a JSON array of strings: "
                                        f"{e}") from None
            self._image_crcs = None if crcs is None else np.frombuffer(raw("image_crc32"), "<u4").copy()
        self._check_values(n)
        self.size = size
        self._chunk = chunk
        nchunks = 0 if crcs is None else len(self._image_crcs)
        self._verified = np.ones(nchunks, bool) if crcs is None else np.zeros(nchunks, bool)
        if n > 0:
            self.base_images = np.memmap(self.path, dtype=np.uint8, mode="r", offset=sec["images"][0],
                                         shape=(n, size, size, 3))
        else:
            self.base_images = np.zeros((0, size, size, 3), np.uint8)
        self.indices = None  # None: the whole file
        if verify == "full":
            self.verify_images()

    # -- checks ---------------------------------------------------------------------------
    def _bad(self, part, what):
        return PackedFormatError(f"{self.path}: {part}: {what}")

    def _read_header(self, f, fsize):
        """(n, size, sections, header, section CRCs or None, image chunk) with every field
        checked; the prefix and header checksum first, before the JSON is decoded."""
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
            raise PackedFormatError(f"{self.path}: not a glae packed dataset (bad magic)")
        _, version, reserved, hoff, hlen, flags, hcrc = _PREFIX.unpack(prefix)
        if version != VERSION:
            raise PackedFormatError(f"{self.path}: format version {version}, this glae reads {VERSION}")
        if hoff == 0 or hoff + hlen != fsize:
            raise PackedFormatError(f"{self.path}: truncated or incomplete file: header at {hoff}+{hlen}, "
                                    f"file has {fsize} bytes")
        if hoff < _PREFIX.size or hoff % _ALIGN or hlen > _MAX_HEADER:
            raise self._bad("prefix", f"header offset {hoff} (length {hlen}) is not a 64-byte aligned "
                                      "position after the prefix")
        if flags not in (0, _FLAG_CRC) or reserved or any(prefix[40:]):
            raise self._bad("prefix", f"unknown flags {flags:#x} or non-zero reserved bytes")
        f.seek(hoff)
        hblob = f.read(hlen)
        if flags & _FLAG_CRC and zlib.crc32(hblob, zlib.crc32(prefix[:32])) != hcrc:
            raise self._bad("header", "the prefix or the JSON header does not match the checksum saved "
                                      "with them (the file is corrupted or was edited)")
        if not flags & _FLAG_CRC and (hcrc or any(prefix[32:36])):
            raise self._bad("prefix", "a header checksum without the flag that announces it")
        try:
            header = json.loads(hblob.decode("utf-8"))
        except (ValueError, RecursionError) as e:
            raise self._bad("header", f"not JSON: {e}") from None
        if not isinstance(header, dict):
            raise self._bad("header", f"must be a JSON object, got {type(header).__name__}")

        def count(key, lo):
            v = header.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise self._bad("header", f"{key!r} must be an integer >= {lo}, got {v!r}")
            return v

        if header.get("format", "glae-packed") != "glae-packed" or header.get("version", VERSION) != VERSION:
            raise self._bad("header", f"format {header.get('format')!r} version {header.get('version')!r}, "
                                      f"expected 'glae-packed' {VERSION}")
        n, size = count("n", 0), count("size", 1)
        if header.get("channels", 3) != 3:
            raise self._bad("header", f"'channels' must be 3, got {header.get('channels')!r}")
        if not isinstance(header.get("meta", {}), dict):
            raise self._bad("header", f"'meta' must be a JSON object, got {type(header['meta']).__name__}")
        if not isinstance(header.get("hash", ""), str):
            raise self._bad("header", "'hash' must be a string")
        self._check_meta(header.get("meta", {}), n)
        sec = header.get("sections")
        if not isinstance(sec, dict):
            raise self._bad("header", f"'sections' must be a JSON object, got {type(sec).__name__}")
        crcs, chunk = None, _image_chunk(size)
        if flags & _FLAG_CRC:
            ck = header.get("checksums")
            ok = isinstance(ck, dict) and isinstance(ck.get("crc32"), dict) and isinstance(
                ck.get("image_chunk"), int) and not isinstance(ck["image_chunk"], bool) and ck["image_chunk"] >= 1
            if ok:
                crcs, chunk = ck["crc32"], ck["image_chunk"]
            names = _SECTIONS[1:] + ("image_crc32",)
            if not ok or set(crcs) != set(names) or any(
                    isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < 2 ** 32 for c in crcs.values()):
                raise self._bad("header", f"'checksums' must hold crc32 {{{', '.join(names)}}} and image_chunk")
        else:
            warnings.warn(f"{self.path}: written by an older glae without checksums: loaded unverified",
                          UnverifiedPackedWarning, stacklevel=3)
        img = size * size * 3
        if n * img > fsize:
            raise self._bad("header", f"{n} images of {size}x{size} cannot fit in a file of {fsize} bytes")
        want = {"images": n * img, "ages": 4 * n, "sigmas": 4 * n, "identities": 8 * n, "hashes": 32 * n}
        if crcs is not None:
            want["image_crc32"] = 4 * -(-n // chunk)
        names = _SECTIONS + (("image_crc32",) if crcs is not None else ())
        extra = sorted(set(sec) - set(names))
        if extra:
            raise self._bad("header", f"unknown sections {extra}")
        spans = []
        for name in names:
            if name not in sec:
                raise self._bad("header", f"no section {name!r}")
            v = sec[name]
            if not (isinstance(v, list) and len(v) == 2 and all(
                    isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)):
                raise self._bad(f"section {name!r}", f"must be [offset, nbytes] of non-negative integers, got {v!r}")
            off, nb = v
            if name in want and nb != want[name]:
                raise PackedFormatError(f"{self.path}: section {name} has {nb} bytes, expected {want[name]}")
            if off % _ALIGN:
                raise self._bad(f"section {name!r}", f"offset {off} is not 64-byte aligned")
            if off < _PREFIX.size or off + nb > hoff:
                raise PackedFormatError(f"{self.path}: section {name} lies outside the data area")
            spans.append((off, off + nb, name))
        spans.sort()
        for (_, e0, a), (b1, _, b) in zip(spans, spans[1:]):
            if b1 < e0:
                raise self._bad(f"section {b!r}", f"overlaps section {a!r}")
        # the bytes between sections are the writer's zero padding (< 64 bytes each): so
        # every byte of the file is either checked by a CRC or known to be zero
        ends = [(e, name) for _, e, name in spans]
        for (e, name), nxt in zip(ends, [b for b, _, _ in spans[1:]] + [hoff]):
            if nxt - e >= _ALIGN:
                raise self._bad(f"section {name!r}", f"followed by {nxt - e} unused bytes (at most 63)")
            f.seek(e)
            if any(f.read(nxt - e)):
                raise self._bad(f"padding after section {name!r}", "not zero (the file is corrupted)")
        if sec["images"][0] != _PREFIX.size:
            raise self._bad("section 'images'", f"must start right after the prefix (64), not at {sec['images'][0]}")
        return n, size, sec, header, crcs, chunk

    def _check_meta(self, meta, n):
        """The header facts the library reads back (alignment, counts) must make sense."""
        def bad(key, what):
            return self._bad(f"meta {key!r}", f"{what}, got {meta[key]!r}")

        if "margin" in meta:
            m = meta["margin"]
            if isinstance(m, bool) or not isinstance(m, (int, float)) or not (math.isfinite(m) and m >= 0):
                raise bad("margin", "must be a finite number >= 0")
        for key in ("size",):
            if key in meta and (isinstance(meta[key], bool) or not isinstance(meta[key], int) or meta[key] < 1):
                raise bad(key, "must be an integer >= 1")
        for key in ("n_aligned_with_landmarks", "n_skipped", "n_detected", "n_no_face", "n_identities"):
            v = meta.get(key)
            # (counts of the file a subset came from: they may exceed this file's n)
            if key in meta and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise bad(key, "must be an integer >= 0")
        if "identity_names" in meta and not (isinstance(meta["identity_names"], list) and all(
                isinstance(x, str) for x in meta["identity_names"])):
            raise self._bad("meta 'identity_names'", "must be a list of strings")

    def _check_values(self, n):
        a, s, ids = self.ages, self.sigmas, self.identities
        if not (np.isnan(a) | (np.isfinite(a) & (a >= 0))).all():
            i = int(np.argmin(np.isnan(a) | (np.isfinite(a) & (a >= 0))))
            raise self._bad("section 'ages'", f"ages[{i}] = {float(a[i]):g} (must be >= 0, NaN: none)")
        ok = np.isnan(s) | (np.isfinite(s) & (s > 0))
        if not ok.all():
            i = int(np.argmin(ok))
            raise self._bad("section 'sigmas'", f"sigmas[{i}] = {float(s[i]):g} (must be > 0, NaN: none)")
        if n and ids.min() < -1:
            i = int(np.argmin(ids))
            raise self._bad("section 'identities'", f"identities[{i}] = {ids[i]} (must be >= -1)")
        if not isinstance(self.paths, list) or not all(isinstance(p, str) for p in self.paths):
            raise self._bad("section 'paths'", "not a JSON array of strings")
        if len(self.paths) != n:
            raise PackedFormatError(f"{self.path}: {len(self.paths)} paths for {n} images")

    def verify_images(self, indices=None):
        """Check the pixel CRC-32s of the chunks holding `indices` (positions in this data
        set; None: every image) that were not checked yet; PackedFormatError names the
        first damaged chunk's images. Chunks of an older file without checksums pass."""
        done = self._verified
        if done.all():
            return
        if indices is None:
            chunks = np.flatnonzero(~done)
        else:
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
            if self.indices is not None:
                idx = self.indices[idx]
            n = len(self.base_images)
            if idx.size and (idx.min() < -n or idx.max() >= n):
                raise IndexError(f"indices out of range for a dataset of {n}")
            idx = np.where(idx < 0, idx + n, idx)
            chunks = np.unique(idx // self._chunk)
            chunks = chunks[~done[chunks]]
        flat = self.base_images.reshape(-1)
        per = self._chunk * self.size * self.size * 3
        for c in chunks:
            c = int(c)
            if zlib.crc32(flat[c * per:(c + 1) * per]) != int(self._image_crcs[c]):
                first, last = c * self._chunk, min((c + 1) * self._chunk, len(self.base_images)) - 1
                raise self._bad("section 'images'", f"the pixels of images {first}..{last} do not match "
                                                    "the checksum saved with them (the file is corrupted)")
            done[c] = True

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
        self.verify_images(np.arange(len(self)))  # never new checksums over damaged pixels
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
