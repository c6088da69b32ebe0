"""The packed dataset file: round trip, memmap, atomic write, validation; and prepare()."""
import hashlib
import json
import os
import struct
import warnings
import zlib

import numpy as np
import pytest

from glae import _C
from glae.data import (PackedDataset, PackedFormatError, PackedWriter, Record, pixel_hash, prepare, write_packed)
from glae.data.packed import UnverifiedPackedWarning

HAS_ALIGN = hasattr(_C, "align_face") and hasattr(_C, "center_crop_resize")


def make(n=7, s=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
    ages = rng.uniform(0, 90, n).astype(np.float32)
    sigmas = np.where(rng.random(n) < 0.5, np.nan, rng.uniform(1, 5, n)).astype(np.float32)
    ids = rng.integers(-1, 3, n)
    paths = [f"dir/é{i}.jpg" for i in range(n)]  # UTF-8 survives
    return images, ages, sigmas, ids, paths


_KEEP = object()


def forge(raw, edit=None, header=_KEEP, crc=True):
    """The file `raw` with its JSON header changed by edit(header dict) (or replaced by
    `header`, any JSON value) and the prefix's header checksum recomputed, as a deliberate
    edit would: what the field checks must catch without the checksum's help."""
    hoff, hlen = struct.unpack("<QQ", raw[16:32])
    if header is _KEEP:
        header = json.loads(raw[hoff:hoff + hlen])
        edit(header)
    blob = json.dumps(header).encode()
    head = raw[:24] + struct.pack("<Q", len(blob))
    flags = 1 if crc else 0
    c = zlib.crc32(blob, zlib.crc32(head)) if crc else 0
    return head + struct.pack("<II", flags, c) + raw[40:hoff] + blob


def test_round_trip(tmp_path):
    images, ages, sigmas, ids, paths = make()
    p = write_packed(tmp_path / "d.glae", images, ages, sigmas, ids, paths, meta={"k": np.int64(3)})
    ds = PackedDataset(p)
    assert len(ds) == 7 and ds.size == 8
    assert isinstance(ds.images, np.memmap) and not ds.images.flags.writeable
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.ages, ages)
    np.testing.assert_array_equal(ds.sigmas, sigmas)  # NaN == NaN for assert_array_equal
    np.testing.assert_array_equal(ds.identities, ids)
    assert ds.ages.dtype == np.float32 and ds.identities.dtype == np.int64
    assert ds.paths == paths and ds.meta == {"k": 3}
    assert ds.align_size is None and ds.align_margin is None  # not written by prepare
    # default hash: sha256 over (h, w) and the pixels, independently recomputed here
    want = hashlib.sha256(struct.pack("<II", 8, 8) + images[3].tobytes()).digest()
    assert ds.hashes.shape == (7, 32) and ds.hashes[3].tobytes() == want
    assert ds.hash_hex(3) == want.hex()
    # the pixel section is where the header says and 64-byte aligned
    with open(p, "rb") as f:
        raw = f.read()
    assert raw[:8] == b"GLAEPACK" and raw[64:64 + images.nbytes] == images.tobytes()


def test_subset_is_a_view(tmp_path):
    images, ages, sigmas, ids, paths = make()
    ds = PackedDataset(write_packed(tmp_path / "d.glae", images, ages, sigmas, ids, paths))
    sub = ds.subset([5, 1, 2])
    assert len(sub) == 3 and sub.paths == [paths[5], paths[1], paths[2]]
    np.testing.assert_array_equal(sub.ages, ages[[5, 1, 2]])
    np.testing.assert_array_equal(sub.images[0], images[5])
    np.testing.assert_array_equal(np.asarray(sub.images), images[[5, 1, 2]])
    assert sub.base_images is ds.base_images
    np.testing.assert_array_equal(sub.indices, [5, 1, 2])
    subsub = sub.subset([2, 0])
    np.testing.assert_array_equal(subsub.indices, [2, 5])
    np.testing.assert_array_equal(subsub.images[1], images[5])
    mask = np.zeros(7, bool)
    mask[[0, 6]] = True
    assert ds.subset(mask).paths == [paths[0], paths[6]]
    with pytest.raises(IndexError):
        ds.subset([7])
    assert len(ds) == 7  # the original is untouched


def test_empty_dataset(tmp_path):
    p = write_packed(tmp_path / "e.glae", np.zeros((0, 4, 4, 3), np.uint8), [])
    ds = PackedDataset(p)
    assert len(ds) == 0 and ds.images.shape == (0, 4, 4, 3)


def test_atomic_write(tmp_path):
    images, ages, *_ = make()
    target = tmp_path / "d.glae"
    write_packed(target, images, ages)
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with PackedWriter(target, 8) as w:
            w.append(images[0], 1.0)
            raise RuntimeError("boom")
    assert target.read_bytes() == before  # old file intact
    assert os.listdir(tmp_path) == ["d.glae"]  # temporary removed
    w = PackedWriter(target, 8)
    w.append(images[0], 1.0)
    assert target.read_bytes() == before  # nothing visible before close()
    w.close()
    assert len(PackedDataset(target)) == 1


def test_writer_bad_input(tmp_path):
    w = PackedWriter(tmp_path / "x.glae", 8)
    with pytest.raises(ValueError, match="uint8"):
        w.append(np.zeros((8, 8, 3), np.float32), 1)
    with pytest.raises(ValueError, match=r"\(8, 8, 3\)"):
        w.append(np.zeros((8, 9, 3), np.uint8), 1)
    with pytest.raises(ValueError, match="32 bytes"):
        w.append(np.zeros((8, 8, 3), np.uint8), 1, hash=b"short")
    w.abort()
    with pytest.raises(ValueError, match="size"):
        PackedWriter(tmp_path / "y.glae", 0)
    with pytest.raises(FileNotFoundError):
        PackedWriter(tmp_path / "no" / "y.glae", 8)
    with pytest.raises(ValueError, match="ages has 2"):
        write_packed(tmp_path / "z.glae", np.zeros((3, 4, 4, 3), np.uint8), [1, 2])
    with pytest.raises(ValueError, match=r"\(N, S, S, 3\)"):
        write_packed(tmp_path / "z.glae", np.zeros((3, 4, 5, 3), np.uint8), [1, 2, 3])


def test_truncated_and_foreign_files(tmp_path):
    images, ages, *_ = make()
    p = write_packed(tmp_path / "d.glae", images, ages)
    raw = open(p, "rb").read()
    for cut in (10, 64, 100, len(raw) - 1):
        q = tmp_path / f"t{cut}.glae"
        q.write_bytes(raw[:cut])
        with pytest.raises(PackedFormatError):
            PackedDataset(q)
    (tmp_path / "f.glae").write_bytes(b"PK\x03\x04" + b"\0" * 200)
    with pytest.raises(PackedFormatError, match="not a glae packed dataset"):
        PackedDataset(tmp_path / "f.glae")
    (tmp_path / "v.glae").write_bytes(raw[:8] + struct.pack("<I", 99) + raw[12:])
    with pytest.raises(PackedFormatError, match="version 99"):
        PackedDataset(tmp_path / "v.glae")
    # a header that lies about N (its checksum recomputed: the field checks catch it)
    (tmp_path / "n.glae").write_bytes(forge(raw, lambda h: h.update(n=8)))
    with pytest.raises(PackedFormatError, match="expected"):
        PackedDataset(tmp_path / "n.glae")
    with pytest.raises(FileNotFoundError):
        PackedDataset(tmp_path / "absent.glae")


# ------------------------------------------------------------------ integrity (issue 17)


def _section(raw, name):
    hoff, hlen = struct.unpack("<QQ", raw[16:32])
    return json.loads(raw[hoff:hoff + hlen])["sections"][name]


def _refused(tmp_path, blob, match, name="bad.glae", verify="full"):
    q = tmp_path / name
    q.write_bytes(blob)
    with pytest.raises(PackedFormatError, match=match) as e:
        PackedDataset(q, verify=verify)
    assert str(q) in str(e.value)  # the message names the file
    return str(e.value)


def test_every_damaged_byte_is_refused(tmp_path):
    """Issue 17: 651 of 2,500 damaged files opened and read without error. Now a flipped
    bit anywhere (prefix, pixels, each label section, padding, header) is refused, and the
    message names the part."""
    images, ages, sigmas, ids, paths = make(n=9, s=8)
    raw = open(write_packed(tmp_path / "d.glae", images, ages, sigmas, ids, paths, meta={"margin": 0.1}), "rb").read()
    rng = np.random.default_rng(0)
    for pos in list(range(64)) + list(range(64, len(raw), 7)):  # the prefix, every 7th byte after
        bad = bytearray(raw)
        bad[pos] ^= 1 << int(rng.integers(8))
        _refused(tmp_path, bytes(bad), None)
    # the part is named: one flip per section, and in the padding
    for name in ("images", "ages", "sigmas", "identities", "hashes", "paths", "image_crc32"):
        off, nb = _section(raw, name)
        bad = bytearray(raw)
        bad[off + nb // 2] ^= 0x10
        _refused(tmp_path, bytes(bad), f"section '{name}'")
    off, nb = _section(raw, "ages")
    bad = bytearray(raw)
    bad[off + nb] = 1
    _refused(tmp_path, bytes(bad), "padding after section 'ages'")


def test_mutated_files_are_all_refused(tmp_path):
    """Issue 17's run: 651 of 2,500 damaged packed files opened and read without error. Now
    400 mutations (byte changes, runs of random bytes, cuts, insertions, deletions, in every
    part of the file) each raise PackedFormatError (a ValueError), nothing else."""
    images, ages, sigmas, ids, paths = make(n=6, s=8)
    raw = open(write_packed(tmp_path / "d.glae", images, ages, sigmas, ids, paths,
                            meta={"margin": 0.1, "size": 8}), "rb").read()
    rng = np.random.default_rng(17)
    q = tmp_path / "m.glae"
    for i in range(400):
        b = bytearray(raw)
        pos = int(rng.integers(len(b)))
        kind = i % 5
        if kind == 0:
            b[pos] = (b[pos] + int(rng.integers(1, 256))) % 256
        elif kind == 1:
            k = int(rng.integers(2, 40))
            b[pos:pos + k] = rng.bytes(k)
            if bytes(b) == raw:
                continue
        elif kind == 2:
            b = b[:pos]
        elif kind == 3:
            b[pos:pos] = rng.bytes(int(rng.integers(1, 9)))
        else:
            del b[pos:pos + int(rng.integers(1, 9))]
        q.write_bytes(bytes(b))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(PackedFormatError):
                PackedDataset(q)


def test_header_fields_checked_even_with_a_valid_checksum(tmp_path):
    """Each finding of issue 17 about header fields, on files whose header checksum was
    recomputed (a deliberate edit): the field checks alone refuse them."""
    images, ages, *_ = make(n=5, s=8)
    raw = open(write_packed(tmp_path / "d.glae", images, ages, meta={"margin": 0.2, "size": 8}), "rb").read()
    PackedDataset(tmp_path / "d.glae")  # the original is fine
    assert len(PackedDataset(tmp_path / "d.glae", verify="lazy")) == 5

    def shift(name, by):
        def edit(h):
            h["sections"][name][0] += by
        return edit

    def setmeta(key, v):
        return lambda h: h["meta"].update({key: v})

    cases = [
        (lambda h: h["meta"].update(margin=float("nan")), "meta 'margin'.*finite"),
        (lambda h: h["meta"].update(margin=-1), "meta 'margin'"),
        (lambda h: h["meta"].update(margin="0.1"), "meta 'margin'"),
        (lambda h: h.update(size=-5), "'size' must be an integer >= 1, got -5"),
        (lambda h: h.update(size=8.0), "'size' must be an integer"),
        (lambda h: h.update(n=-1), "'n' must be an integer >= 0"),
        (lambda h: h.update(n=True), "'n' must be an integer"),
        (lambda h: h.update(n=10 ** 12), "cannot fit"),
        (shift("images", 1), "section 'images'.*not 64-byte aligned"),
        (shift("ages", 1), "section 'ages'.*not 64-byte aligned"),
        (shift("images", 64), "section images has|section 'images'"),
        (lambda h: h["sections"].update(sigmas=list(h["sections"]["ages"])), "overlaps"),
        (lambda h: h["sections"]["ages"].__setitem__(1, -20), "non-negative|has -20 bytes"),
        (lambda h: h["sections"].update(ages="x"), "section 'ages'.*\\[offset, nbytes\\]"),
        (lambda h: h["sections"].update(extra=[0, 0]), "unknown sections"),
        (lambda h: h["sections"].pop("paths"), "no section 'paths'"),
        (lambda h: h.update(sections=[]), "'sections' must be a JSON object"),
        (lambda h: h.update(meta=[1]), "'meta' must be a JSON object"),
        (lambda h: h.update(channels=4), "'channels' must be 3"),
        (lambda h: h.update(format="zip"), "format 'zip'"),
        (lambda h: h["checksums"].update(image_chunk=0), "'checksums'"),
        (lambda h: h["checksums"]["crc32"].pop("ages"), "'checksums'"),
        (lambda h: h["checksums"]["crc32"].update(ages=-1), "'checksums'"),
        (setmeta("n_aligned_with_landmarks", -6), "meta 'n_aligned_with_landmarks'"),
        (setmeta("size", 0), "meta 'size'"),
        (setmeta("identity_names", "ab"), "meta 'identity_names'"),
        (lambda h: h["checksums"]["crc32"].update(ages=h["checksums"]["crc32"]["ages"] ^ 1),
         "section 'ages'.*checksum"),
    ]
    for i, (edit, match) in enumerate(cases):
        _refused(tmp_path, forge(raw, edit), match, name=f"c{i}.glae")
    # a header that is JSON but not an object (was AttributeError)
    for i, h in enumerate(([], 3, "x", None)):
        _refused(tmp_path, forge(raw, header=h), "header: must be a JSON object", name=f"h{i}.glae")
    _refused(tmp_path, forge(raw, header={"n": 1}), "'size' must be")
    # the header itself damaged, checksum recomputed: not JSON
    hoff, hlen = struct.unpack("<QQ", raw[16:32])
    blob = b"{" * 100000
    head = raw[:24] + struct.pack("<Q", len(blob))
    _refused(tmp_path, head + struct.pack("<II", 1, zlib.crc32(blob, zlib.crc32(head))) + raw[40:hoff] + blob,
             "header: not JSON")
    # header offset not aligned, or inside the prefix
    bad = raw[:16] + struct.pack("<Q", 40) + raw[24:]
    _refused(tmp_path, bad, "truncated|prefix")
    # unknown flags / reserved bytes
    _refused(tmp_path, raw[:32] + struct.pack("<I", 3) + raw[36:], "prefix: unknown flags")
    _refused(tmp_path, raw[:50] + b"\x01" + raw[51:], "prefix: unknown flags 0x1 or non-zero reserved")


def test_bad_label_values_are_refused(tmp_path):
    """Values the checksums cannot judge (a file written with them): negative or infinite
    ages, sigmas <= 0, identities below -1, paths that are not strings."""
    images = np.zeros((3, 4, 4, 3), np.uint8)
    for kw, match in ((dict(ages=[1, -5, 2]), r"ages\[1\] = -5"), (dict(ages=[1, np.inf, 2]), "ages"),
                      (dict(ages=[1, 2, 3], sigmas=[1, 0, np.nan]), r"sigmas\[1\]"),
                      (dict(ages=[1, 2, 3], identities=[0, -2, 1]), r"identities\[1\] = -2")):
        p = tmp_path / "v.glae"
        write_packed(p, images, **kw)
        with pytest.raises(PackedFormatError, match=match):
            PackedDataset(p)


def test_old_files_without_checksums_load_with_a_note(tmp_path):
    images, ages, sigmas, ids, paths = make(n=4)
    raw = open(write_packed(tmp_path / "d.glae", images, ages, sigmas, ids, paths), "rb").read()

    def old(h):  # what glae wrote before issue 17: no image_crc32 section, no checksums
        del h["checksums"]
        del h["sections"]["image_crc32"]

    # the old layout: the header right after the paths section (padded to 64 bytes)
    cut = _section(raw, "image_crc32")[0]
    hoff = struct.unpack("<Q", raw[16:24])[0]
    raw = raw[:16] + struct.pack("<Q", cut) + raw[24:cut] + raw[hoff:]
    q = tmp_path / "old.glae"
    q.write_bytes(forge(raw, old, crc=False))
    with pytest.warns(UnverifiedPackedWarning, match="old.glae: written by an older glae without checksums") as w:
        ds = PackedDataset(q)
    assert len(w) == 1 and "\n" not in str(w[0].message)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.ages, ages)
    assert ds.paths == paths
    ds.verify_images()  # nothing to check: passes
    # its header fields are checked all the same
    q.write_bytes(forge(raw, lambda h: h.update(size=-5), crc=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(PackedFormatError, match="'size'"):
            PackedDataset(q)
    # a checksum without the flag (or the flag cleared on a new file) is refused
    raw = open(tmp_path / "d.glae", "rb").read()
    bad = raw[:32] + struct.pack("<I", 0) + raw[36:]
    _refused(tmp_path, bad, "checksum without the flag")


def test_lazy_verification_checks_each_batch_before_it_is_used(tmp_path):
    """verify="lazy": open without reading the pixels; a damaged image is refused the
    first time its chunk is used (verify_images, Dataset.from_packed, a subset), and the
    refusal names the images."""
    from glae.data import packed as P

    images, ages, *_ = make(n=40, s=64)  # 12 kB each: 5 per 64 KiB chunk
    assert P._image_chunk(64) == 5 and P._image_chunk(224) == 1
    p = write_packed(tmp_path / "d.glae", images, ages)
    raw = bytearray(open(p, "rb").read())
    raw[64 + 31 * 64 * 64 * 3 + 5] ^= 1  # image 31: chunk 6 (images 30..34)
    q = tmp_path / "bad.glae"
    q.write_bytes(bytes(raw))
    with pytest.raises(PackedFormatError, match=r"section 'images': the pixels of images 30\.\.34"):
        PackedDataset(q)
    ds = PackedDataset(q, verify="lazy")  # opens: labels checked, pixels not yet
    ds.verify_images([1, 2, 29, 35])  # other chunks: fine
    with pytest.raises(PackedFormatError, match=r"images 30\.\.34"):
        ds.verify_images([1, 32])
    with pytest.raises(PackedFormatError):
        ds.subset([3, 30]).verify_images([1])
    ds.subset([3, 30]).verify_images([0])
    from glae.train import Dataset
    with pytest.raises(PackedFormatError):
        Dataset.from_packed(ds.subset([0, 33]))  # gathered now: checked now
    assert Dataset.from_packed(ds.subset([0, 1])).verify is None
    with pytest.raises(PackedFormatError):
        ds.subset([31]).write(tmp_path / "laundered.glae")  # no fresh checksums over damage
    assert not (tmp_path / "laundered.glae").exists()
    with pytest.raises(PackedFormatError):
        ds.verify_images([-8])  # image 32
    with pytest.raises(IndexError):
        ds.verify_images([40])
    d = Dataset.from_packed(ds)
    assert d.verify is not None
    d.verify(np.array([0, 39]))
    with pytest.raises(PackedFormatError):
        d.verify(np.array([34]))


def test_small_chunks_lazy(tmp_path, monkeypatch):
    """Chunks smaller than the file: only the chunks used are read; a good chunk passes
    even when another is damaged."""
    from glae.data import packed as P

    monkeypatch.setattr(P, "_CHUNK_BYTES", 2 * 8 * 8 * 3)  # 2 images per chunk
    images, ages, *_ = make(n=7, s=8)
    p = write_packed(tmp_path / "d.glae", images, ages)
    raw = bytearray(open(p, "rb").read())
    raw[64 + 5 * 192] ^= 1  # image 5: chunk 2 (images 4, 5)
    (tmp_path / "b.glae").write_bytes(bytes(raw))
    ds = PackedDataset(tmp_path / "b.glae", verify="lazy")
    ds.verify_images([0, 1, 2, 3, 6])
    assert ds._verified.tolist() == [True, True, False, True]
    with pytest.raises(PackedFormatError, match=r"images 4\.\.5"):
        ds.verify_images([4])
    with pytest.raises(PackedFormatError, match=r"images 4\.\.5"):
        PackedDataset(tmp_path / "b.glae")
    np.testing.assert_array_equal(PackedDataset(p).images, images)  # the good file, 4 chunks


def test_training_never_consumes_a_damaged_batch(tmp_path):
    """Issue 17: 148 of 150 damaged files trained to the end without complaint. A damaged
    pixel in a lazily verified file stops training at the batch that holds it, before the
    step; with the default (full) verification it is refused on open."""
    import glae
    from glae.train import Trainer, as_dataset
    from glae.data import packed as P

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    ages = rng.uniform(1, 60, 16)
    p = write_packed(tmp_path / "d.glae", images, ages)
    raw = bytearray(open(p, "rb").read())
    raw[64 + 7 * 16 * 16 * 3 + 100] ^= 4
    q = tmp_path / "bad.glae"
    q.write_bytes(bytes(raw))
    with pytest.raises(PackedFormatError, match="section 'images'"):
        as_dataset(str(q))
    cfg = glae.Config(backbone="resnet18", head="gap", image_size=16, batch_size=4, stage1_epochs=1,
                      stage2_epochs=0, linear_scaling=False, threads=1, loader_threads=1,
                      augment={"crop": False, "flip": False, "color_jitter": False, "randaugment": False})
    m = glae.Model.from_config(cfg)
    t = Trainer(m, cfg, Dataset_from(q), progress=False, log=None)
    with pytest.raises(PackedFormatError, match="section 'images'"):
        t.fit()
    assert t.state["step"] < 4  # stopped before the epoch's end


def Dataset_from(q):
    from glae.train import Dataset
    return Dataset.from_packed(PackedDataset(q, verify="lazy"))


# ------------------------------------------------------------------------------ prepare


def _pil_center(img, landmarks, size, margin):
    """A stand-in transform (nearest-neighbour centre crop) so prepare's bookkeeping is
    tested without the C kernels."""
    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    idx = (np.arange(size) * s // size)
    return np.ascontiguousarray(img[y0 + idx][:, x0 + idx])


def _fixture(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    recs, arrays = [], []
    for i in range(9):
        a = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        arrays.append(a)
        lm = np.array([[12, 12], [28, 12], [20, 18], [14, 24], [26, 24]], np.float32) if i % 2 else None
        recs.append(Record(str(tmp_path / f"{i}.png"), i * 10, identity=i // 3, landmarks=lm))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    recs.insert(4, Record(str(tmp_path / "bad.jpg"), 50))
    recs.append(Record(str(tmp_path / "gone.jpg"), 60))
    return recs, arrays


def test_prepare_bookkeeping(tmp_path):
    recs, arrays = _fixture(tmp_path)
    out = tmp_path / "p.glae"
    rep = prepare(recs, out, size=16, workers=3, transform=_pil_center)
    assert rep.n_seen == 11 and rep.n_used == 9
    assert sorted(os.path.basename(p.source) for p in rep.skipped) == ["bad.jpg", "gone.jpg"]
    ds = PackedDataset(out)
    assert len(ds) == 9 and ds.size == 16
    np.testing.assert_array_equal(ds.ages, np.arange(9) * 10)  # input order kept
    np.testing.assert_array_equal(ds.identities, np.arange(9) // 3)
    for i in range(9):
        np.testing.assert_array_equal(ds.images[i], _pil_center(arrays[i], None, 16, 0))
        assert ds.hashes[i].tobytes() == pixel_hash(arrays[i])  # hash of the decoded source
    assert ds.meta["n_skipped"] == 2 and ds.meta["n_aligned_with_landmarks"] == 4
    assert ds.align_size == 16 and ds.align_margin == 0.0  # what inference must align with
    # the same with one worker: byte-identical file
    prepare(recs, tmp_path / "q.glae", size=16, workers=1, transform=_pil_center)
    assert (tmp_path / "q.glae").read_bytes() == out.read_bytes()


def test_prepare_errors(tmp_path):
    recs, _ = _fixture(tmp_path)
    with pytest.raises(ValueError, match="no image could be prepared"):
        prepare(recs[4:5], tmp_path / "x.glae", size=16, transform=_pil_center)
    assert not (tmp_path / "x.glae").exists()
    with pytest.raises(ValueError, match="workers"):
        prepare(recs, tmp_path / "x.glae", workers=0, transform=_pil_center)
    with pytest.raises(ValueError, match="margin"):
        prepare(recs, tmp_path / "x.glae", margin=-0.1, transform=_pil_center)
    with pytest.raises(ValueError, match="kind:path"):
        prepare("nonsense", tmp_path / "x.glae", transform=_pil_center)
    with pytest.raises(TypeError, match="Record"):
        prepare(["a.jpg"], tmp_path / "x.glae", transform=_pil_center)
    with pytest.raises(ValueError, match=r"meta: keys \['margin'\] are written by prepare"):
        prepare(recs, tmp_path / "x.glae", transform=_pil_center, meta={"margin": 0.3, "note": "x"})
    assert not (tmp_path / "x.glae").exists()
    # a transform that fails or returns the wrong thing is reported per image, not a crash
    def picky(img, lm, size, margin):
        if lm is not None:
            return np.zeros((3, 3), np.uint8)
        if img.shape[0] == 30:
            raise ValueError("no face")
        return _pil_center(img, lm, size, margin)

    rep = prepare(recs, tmp_path / "y.glae", size=16, transform=picky)
    reasons = [p.reason for p in rep.skipped]
    assert rep.n_used == 4 and sum("alignment returned" in r for r in reasons) == 4
    assert "alignment failed: no face" in reasons


@pytest.mark.skipif(not HAS_ALIGN, reason="glae._C has no align_face/center_crop_resize in this build")
def test_prepare_with_c_alignment(tmp_path):
    recs, arrays = _fixture(tmp_path)
    rep = prepare(recs, tmp_path / "c.glae", size=32, margin=0.1, workers=2)
    ds = PackedDataset(tmp_path / "c.glae")
    assert len(ds) == 9 and rep.n_used == 9 and ds.images.shape == (9, 32, 32, 3)
    # images without landmarks went through center_crop_resize, those with through align_face
    np.testing.assert_array_equal(ds.images[0], _C.center_crop_resize(arrays[0], 32))
    np.testing.assert_array_equal(ds.images[1], _C.align_face(arrays[1], recs[1].landmarks, 32, 0.1))
    # the alignment travels with the file, also through a subset
    assert ds.align_size == 32 and ds.align_margin == pytest.approx(0.1)
    assert ds.subset([0, 1]).align_margin == pytest.approx(0.1)


@pytest.mark.skipif(not HAS_ALIGN, reason="glae._C has no align_face/center_crop_resize in this build")
def test_prepare_from_spec(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    d = tmp_path / "utk"
    d.mkdir()
    for i, name in enumerate(["20_0_0_1.jpg.chip.jpg", "30_1_2_2.jpg.chip.jpg", "zz.jpg.chip.jpg"]):
        Image.fromarray(np.full((24, 24, 3), 40 * i, np.uint8)).save(d / name)
    rep = prepare(f"utkface:{d}", tmp_path / "u.glae", size=16, workers=2)
    ds = PackedDataset(tmp_path / "u.glae")
    assert list(ds.ages) == [20, 30] and rep.n_used == 2
    assert any("zz.jpg" in p.source for p in rep.skipped)  # the reader's report is merged


def test_subset_write_keeps_labels_and_header(tmp_path):
    """A protocol's split written as files of their own: the crops and every label array
    of the chosen images, and the source's header facts (prepare's alignment)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
    ages = np.arange(9) * 10.0
    sig = np.where(np.arange(9) % 2 == 0, 2.0, np.nan)
    ids = np.array([3, -1, 4, 5, -1, 6, 7, 8, 9])
    names = [f"img{i}.jpg" for i in range(9)]
    src = PackedDataset(write_packed(tmp_path / "all.glae", images, ages, sigmas=sig,
                                     identities=ids, paths=names,
                                     meta={"size": 8, "margin": 0.1,
                                           "n_aligned_with_landmarks": 9}))
    pick = np.array([7, 0, 3])
    part = PackedDataset(src.subset(pick).write(tmp_path / "part.glae"))
    np.testing.assert_array_equal(np.asarray(part.images), images[pick])
    np.testing.assert_array_equal(part.ages, ages[pick])
    np.testing.assert_array_equal(part.sigmas, sig[pick])
    np.testing.assert_array_equal(part.identities, ids[pick])
    np.testing.assert_array_equal(part.hashes, src.hashes[pick])
    assert part.paths == [names[i] for i in pick]
    assert part.meta == src.meta and (part.align_size, part.align_margin) == (8, 0.1)
