"""The packed dataset file: round trip, memmap, atomic write, validation; and prepare()."""
import hashlib
import json
import os
import struct

import numpy as np
import pytest

from glae import _C
from glae.data import (PackedDataset, PackedFormatError, PackedWriter, Record, pixel_hash, prepare, write_packed)

HAS_ALIGN = hasattr(_C, "align_face") and hasattr(_C, "center_crop_resize")


def make(n=7, s=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
    ages = rng.uniform(0, 90, n).astype(np.float32)
    sigmas = np.where(rng.random(n) < 0.5, np.nan, rng.uniform(1, 5, n)).astype(np.float32)
    ids = rng.integers(-1, 3, n)
    paths = [f"dir/é{i}.jpg" for i in range(n)]  # UTF-8 survives
    return images, ages, sigmas, ids, paths


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
    # a header that lies about N
    hoff, hlen = struct.unpack("<QQ", raw[16:32])
    head = json.loads(raw[hoff:hoff + hlen])
    head["n"] = 8
    blob = json.dumps(head).encode()
    bad = raw[:16] + struct.pack("<QQ", hoff, len(blob)) + raw[32:hoff] + blob
    (tmp_path / "n.glae").write_bytes(bad)
    with pytest.raises(PackedFormatError, match="expected"):
        PackedDataset(tmp_path / "n.glae")
    with pytest.raises(FileNotFoundError):
        PackedDataset(tmp_path / "absent.glae")


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
