"""glae.data readers and the Pillow decoder on fixtures made in tmp_path."""
import os

import numpy as np
import pytest

from glae.data import (DecodeError, Record, load_image, read_age_folders, read_chalearn, read_csv, read_mivia,
                       read_utkface)

Image = pytest.importorskip("PIL.Image")


def save(path, arr, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return str(path)


def rgb(h=20, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


# ------------------------------------------------------------------------------ CSV


def test_read_csv_defaults_and_landmarks(tmp_path):
    for n in "abc":
        save(tmp_path / "img" / f"{n}.png", rgb())
    lm = ",".join(str(v) for v in range(10))
    head = "path,age,sigma,identity," + ",".join(f"l{c}{i}" for i in range(1, 6) for c in "xy")
    csv = write(tmp_path / "labels.csv", f"{head}\nimg/a.png,23,1.5,7,{lm}\nimg/b.png,40.5,,8,{',' * 9}\n"
                                          f"img/c.png,5,0.5,,{lm}\n")
    recs, rep = read_csv(csv)
    assert len(recs) == 3 and not rep.problems
    assert recs[0].path == str(tmp_path / "img" / "a.png")
    assert recs[0].age == 23 and recs[0].sigma == 1.5 and recs[0].identity == 7
    np.testing.assert_array_equal(recs[0].landmarks, np.arange(10, dtype=np.float32).reshape(5, 2))
    assert recs[0].landmarks.dtype == np.float32
    assert recs[1].sigma is None and recs[1].landmarks is None and recs[1].age == 40.5
    assert recs[2].identity is None


def test_read_csv_mapping_and_unparseable_rows(tmp_path):
    save(tmp_path / "x.jpg", rgb())
    csv = write(tmp_path / "l.csv", "file;years;who\nx.jpg;30;alice\nx.jpg;abc;bob\nx.jpg;;carol\n"
                                    "missing.jpg;20;dave\nx.jpg\nx.jpg;31;alice\n")
    recs, rep = read_csv(csv, {"path": "file", "age": "years", "identity": "who"})
    assert [r.age for r in recs] == [30, 31]
    assert [r.identity for r in recs] == [0, 0]  # string ids numbered by first appearance
    reasons = " | ".join(p.reason for p in rep.skipped)
    assert len(rep.skipped) == 4, rep
    for want in ("not a number", "empty age", "image not found", "fields"):
        assert want in reasons
    assert rep.n_seen == 6 and rep.n_used == 2
    assert any("identities are not integers" in p.reason for p in rep.warnings)
    assert ":3" in rep.skipped[0].source  # line numbers in the report


def test_read_csv_no_header_indices(tmp_path):
    save(tmp_path / "x.jpg", rgb())
    csv = write(tmp_path / "l.csv", "12,x.jpg\n")
    recs, _ = read_csv(csv, {"path": 1, "age": 0}, header=False)
    assert recs[0].age == 12
    with pytest.raises(ValueError, match="integer column index"):
        read_csv(csv, header=False)


def test_read_csv_errors(tmp_path):
    save(tmp_path / "x.jpg", rgb())
    with pytest.raises(FileNotFoundError, match="CSV file not found"):
        read_csv(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="empty"):
        read_csv(write(tmp_path / "e.csv", ""))
    with pytest.raises(ValueError, match="no data rows"):
        read_csv(write(tmp_path / "h.csv", "path,age\n"))
    with pytest.raises(ValueError, match="column 'age'"):
        read_csv(write(tmp_path / "c.csv", "path,years\nx.jpg,3\n"))
    neg = write(tmp_path / "n.csv", "path,age\nx.jpg,4\nx.jpg,-3\n")
    with pytest.raises(ValueError, match=r"n\.csv:3: age must be >= 0"):
        read_csv(neg)
    recs, rep = read_csv(neg, errors="report")
    assert len(recs) == 1 and "age must be >= 0" in rep.skipped[0].reason
    bad_lm = write(tmp_path / "b.csv", "path,age,lm\nx.jpg,4,1 2 3 4 5 6 7 8\n")
    with pytest.raises(ValueError, match="landmarks must be 5"):
        read_csv(bad_lm, {"landmarks": "lm"})
    partial = write(tmp_path / "p.csv", "path,age," + ",".join(f"l{c}{i}" for i in range(1, 6) for c in "xy")
                    + "\nx.jpg,4,1,2,3,4,5,6,7,8,,\n")
    with pytest.raises(ValueError, match="landmarks must be 5"):
        read_csv(partial)
    with pytest.raises(ValueError, match="unknown roles"):
        read_csv(neg, {"agee": "age"})
    with pytest.raises(ValueError, match="errors must be"):
        read_csv(neg, errors="ignore")


def test_age_clipping_policy(tmp_path):
    save(tmp_path / "x.jpg", rgb())
    csv = write(tmp_path / "l.csv", "path,age\nx.jpg,116\nx.jpg,100\n")
    recs, rep = read_csv(csv)
    assert [r.age for r in recs] == [100, 100]
    assert len(rep.warnings) == 1 and "clipped" in rep.warnings[0].reason
    recs, rep = read_csv(csv, max_age=None)
    assert [r.age for r in recs] == [116, 100] and not rep.problems


def test_record_validation():
    with pytest.raises(ValueError, match="age must be >= 0"):
        Record("a.jpg", -1)
    with pytest.raises(ValueError, match="finite"):
        Record("a.jpg", float("nan"))
    with pytest.raises(ValueError, match="landmarks must be 5"):
        Record("a.jpg", 3, landmarks=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="sigma"):
        Record("a.jpg", 3, sigma=-1)
    assert Record("a.jpg", 3, landmarks=np.zeros(10)).landmarks.shape == (5, 2)


# ------------------------------------------------------------------------------ other formats


def test_read_chalearn_and_mivia(tmp_path):
    save(tmp_path / "img" / "000001.jpg", rgb())
    save(tmp_path / "img" / "000002.jpg", rgb())
    ch = write(tmp_path / "Train.csv", "image;mean;stdv\n000001.jpg;25.3;4.1\n000002.jpg;60;x\n")
    recs, rep = read_chalearn(ch, images=tmp_path / "img")
    assert len(recs) == 1 and recs[0].age == pytest.approx(25.3) and recs[0].sigma == pytest.approx(4.1)
    assert "std 'x' is not a number" in rep.skipped[0].reason
    ch2 = write(tmp_path / "img" / "gt.csv", "000001.jpg,30.0,2.0\n")  # no header
    assert read_chalearn(ch2)[0][0].sigma == 2.0
    mv = write(tmp_path / "img" / "training_caip_contest.csv", "000001.jpg,24.5\n000002.jpg,81\nbroken\n")
    recs, rep = read_mivia(mv)
    assert [r.age for r in recs] == [24.5, 81.0] and all(r.sigma is None for r in recs)
    assert len(rep.skipped) == 1 and rep.skipped[0].source.endswith(":3")


def test_malformed_first_row_is_reported_not_taken_for_a_header(tmp_path):
    save(tmp_path / "a.jpg", rgb())
    save(tmp_path / "b.jpg", rgb())
    cases = [
        (read_mivia, "a.jpg,abc\nb.jpg,30\n", "age 'abc' is not a number"),
        (read_mivia, "broken\nb.jpg,30\n", "1 fields"),
        (read_chalearn, "a.jpg,abc,2\nb.jpg,30,1\n", "age 'abc' is not a number"),
        (read_chalearn, "a.jpg;25;x\nb.jpg;30;1\n", "std 'x' is not a number"),
        (read_chalearn, "broken\nb.jpg,30,1\n", "1 fields"),
    ]
    for reader, text, reason in cases:
        recs, rep = reader(write(tmp_path / "l.csv", text))
        assert [r.age for r in recs] == [30], (reader, text)
        assert rep.n_seen == 2 and rep.n_used == 1 and len(rep.skipped) == 1, rep
        assert rep.skipped[0].source.endswith("l.csv:1") and reason in rep.skipped[0].reason, rep
    # a real header is still recognised and skipped (line numbers stay the file's own)
    for reader, text in [(read_mivia, "path,age\na.jpg,abc\nb.jpg,30\n"),
                         (read_chalearn, "image;mean;stdv\na.jpg;abc;1\nb.jpg;30;1\n")]:
        recs, rep = reader(write(tmp_path / "l.csv", text))
        assert [r.age for r in recs] == [30] and rep.n_seen == 2 and len(rep.skipped) == 1, rep
        assert rep.skipped[0].source.endswith("l.csv:2")
    # a lone malformed row is a bad row, not a header with no data after it
    recs, rep = read_mivia(write(tmp_path / "l.csv", "a.jpg,abc\n"))
    assert recs == [] and rep.n_seen == 1 and "not a number" in rep.skipped[0].reason
    with pytest.raises(ValueError, match="no data rows"):
        read_mivia(write(tmp_path / "l.csv", "path,age\n"))


def test_read_utkface(tmp_path):
    d = tmp_path / "utk"
    names = ["25_0_1_20170116220224657.jpg.chip.jpg",
             "24_0_1_20170116220224658 .jpg.chip.jpg",  # stray space
             "55_0_0_20170116232725357jpg.chip.jpg",  # missing dot
             "61_1_20170109142408075.jpg.chip.jpg",  # missing race
             "116_0_0_20170112215240346.jpg.chip.jpg",  # clipped to 100
             "x_0_0_20170112215240346.jpg.chip.jpg",  # no age: skipped
             "README.txt"]
    for n in names:
        (d / n).parent.mkdir(exist_ok=True)
        (d / n).write_bytes(b"")
    recs, rep = read_utkface(d)
    assert [r.age for r in recs] == [100, 24, 25, 55, 61]  # sorted names
    assert recs[2].extra == {"gender": 0, "race": 1}
    assert recs[4].extra == {"gender": 1}
    skipped = {os.path.basename(p.source): p.reason for p in rep.skipped}
    assert set(skipped) == {"x_0_0_20170112215240346.jpg.chip.jpg", "README.txt"}
    warned = {os.path.basename(p.source) for p in rep.warnings}
    assert warned == {names[1], names[2], names[3], names[4]}
    assert rep.n_seen == 7 and rep.n_used == 5
    with pytest.raises(FileNotFoundError):
        read_utkface(tmp_path / "absent")


def test_read_age_folders(tmp_path):
    save(tmp_path / "r" / "23" / "a.png", rgb())
    save(tmp_path / "r" / "7.5" / "b.jpg", rgb())
    (tmp_path / "r" / "7.5" / "notes.txt").write_text("x")
    (tmp_path / "r" / "old").mkdir()
    (tmp_path / "r" / "loose.jpg").write_bytes(b"")
    (tmp_path / "r" / "-4").mkdir()
    recs, rep = read_age_folders(tmp_path / "r")
    assert sorted(r.age for r in recs) == [7.5, 23.0]
    assert len(rep.skipped) == 4
    # every entry is counted: 2 images, notes.txt, loose.jpg and the folders old and -4
    assert rep.n_seen == 6 and rep.n_seen == rep.n_used + len(rep.skipped)
    assert "0 skipped" not in rep.summary() and "6 seen, 2 used, 4 skipped" in rep.summary()
    with pytest.raises(NotADirectoryError):
        read_age_folders(tmp_path / "r" / "loose.jpg")


# ------------------------------------------------------------------------------ decoding


def test_decode_modes(tmp_path):
    a = rgb(12, 10)
    np.testing.assert_array_equal(load_image(save(tmp_path / "a.png", a)), a)
    g = a[:, :, 0]
    out = load_image(save(tmp_path / "g.png", g))
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(g[:, :, None], 3, 2))
    rgba = np.concatenate([a, np.full((12, 10, 1), 255, np.uint8)], 2)
    rgba[0, 0, 3] = 0  # one transparent pixel becomes the mid-grey background
    out = load_image(save(tmp_path / "t.png", rgba))
    np.testing.assert_array_equal(out[1:], a[1:])
    np.testing.assert_array_equal(out[0, 0], [128, 128, 128])
    cmyk = Image.fromarray(a).convert("CMYK")
    cmyk.save(tmp_path / "c.jpg")
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (12, 10, 3)
    assert np.abs(out.astype(int) - a.astype(int)).mean() < 40  # lossy JPEG, but close
    i16 = (g.astype(np.uint16) * 257)
    out = load_image(save(tmp_path / "i16.png", i16))
    np.testing.assert_array_equal(out[:, :, 0], g)


def test_exif_orientation(tmp_path):
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10] = 255  # left half white
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "o.jpg")
    assert out.shape == (20, 10, 3)
    assert out[:8].mean() > 200 and out[12:].mean() < 50  # white half now on top


def test_corrupt_and_truncated(tmp_path):
    p = save(tmp_path / "ok.jpg", rgb(64, 64))
    data = open(p, "rb").read()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("trunc.jpg", "junk.jpg", "empty.png"):
        with pytest.raises(DecodeError):
            load_image(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg")


def test_load_image_names_what_a_non_image_path_is(tmp_path):
    """a folder or a device is not reported as a missing image (issue 17)"""
    with pytest.raises(IsADirectoryError, match="folder"):
        load_image(tmp_path)
    if os.path.exists("/dev/null"):
        with pytest.raises(DecodeError, match="not a regular file"):
            load_image("/dev/null")
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_image(tmp_path / "absent.jpg")
