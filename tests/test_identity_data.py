"""Identity data for pre-training: the folder-per-identity and CSV readers, prepare's
identities: and identities-csv: sources into the packed file (identity column, no ages),
and the command line's prepare + pretrain on them."""
import json
import math
import os

import numpy as np
import pytest

import glae
from glae.cli import main
from glae.data import (PackedDataset, Record, prepare, read_identity_csv, read_identity_folders,
                       read_source)
from glae.data.synthetic import synthetic_identities

Image = pytest.importorskip("PIL.Image")


def save(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture(scope="module")
def people_dir(tmp_path_factory):
    """root/<name>/<k>.png for 8 synthetic people of 5 photographs each, one person with a
    single photograph, an empty folder, a loose file and a non-image file."""
    root = tmp_path_factory.mktemp("ids")
    x, ids, _ = synthetic_identities(8, 5, 32, seed=1)
    for k, (img, i) in enumerate(zip(x, ids)):
        save(root / f"person_{i:02d}" / f"{k}.png", img)
    save(root / "zz_single" / "only.png", x[0])
    os.makedirs(root / "empty")
    (root / "readme.txt").write_text("not a person")
    (root / "person_00" / "notes.txt").write_text("not an image")
    return root


def test_read_identity_folders(people_dir):
    recs, rep = read_identity_folders(people_dir)
    assert len(recs) == 41 and rep.n_used == 41
    assert rep.identity_names == [f"person_{i:02d}" for i in range(8)] + ["zz_single"]
    assert [r.identity for r in recs[:6]] == [0, 0, 0, 0, 0, 1]
    assert all(math.isnan(r.age) for r in recs) and recs[-1].identity == 8
    skipped = {os.path.basename(p.source): p.reason for p in rep.skipped}
    assert skipped == {"empty": "identity folder without images",
                       "readme.txt": "a file outside the identity folders",
                       "notes.txt": "not an image file"}
    warned = [p for p in rep.warnings]
    assert len(warned) == 1 and "zz_single" in warned[0].source
    assert "no positive pair" in warned[0].reason


def test_read_identity_folders_empty(tmp_path):
    os.makedirs(tmp_path / "a")
    with pytest.raises(ValueError, match="no identity-labelled images found"):
        read_identity_folders(tmp_path)
    with pytest.raises(FileNotFoundError, match="identity folder root not found"):
        read_identity_folders(tmp_path / "nope")


def test_read_identity_csv(people_dir, tmp_path):
    a = str(people_dir / "person_00" / "0.png")
    b = str(people_dir / "person_01" / "5.png")
    csv = tmp_path / "ids.csv"
    csv.write_text(f"path,identity\n{a},alice\n{b},bob\n{a},alice\n{b},\nmissing.png,bob\n")
    recs, rep = read_identity_csv(csv)
    assert [r.identity for r in recs] == [0, 1, 0]
    assert rep.identity_names == ["alice", "bob"] and all(math.isnan(r.age) for r in recs)
    reasons = sorted(p.reason for p in rep.skipped)
    assert reasons[0] == "empty identity" and reasons[1].startswith("image not found")
    assert any("bob" in p.source and "no positive pair" in p.reason for p in rep.warnings)
    # integer identities are kept; header=False takes column indices; an age is kept
    csv.write_text(f"{a};7;30\n{b};12;\n")
    recs, rep = read_identity_csv(csv, {"path": 0, "identity": 1, "age": 2}, header=False)
    assert [r.identity for r in recs] == [7, 12] and recs[0].age == 30 and math.isnan(recs[1].age)
    assert rep.identity_names is None
    csv.write_text(f"path,age\n{a},3\n")
    with pytest.raises(ValueError, match=r"column 'identity' \(identity\) not in the header"):
        read_identity_csv(csv)
    csv.write_text("path,identity\nmissing.png,1\n")
    with pytest.raises(ValueError, match="no identity-labelled images found"):
        read_identity_csv(csv)


def test_records_without_an_age():
    assert math.isnan(Record("a.png", None, identity=3).age)
    with pytest.raises(ValueError, match="age must be finite"):
        Record("a.png", float("nan"))  # a NaN given as an age is still an error


def test_prepare_identities_into_the_packed_file(people_dir, tmp_path):
    out = tmp_path / "ids.glaepack"
    rep = prepare(f"identities:{people_dir}", out, size=24, workers=2)
    assert rep.n_used == 41 and len(rep.skipped) == 3
    ds = PackedDataset(out)
    assert len(ds) == 41 and ds.size == 24 and np.all(np.isnan(ds.ages))
    assert ds.identities.tolist() == [r.identity for r in read_identity_folders(people_dir)[0]]
    assert ds.meta["n_identities"] == 9
    assert ds.meta["identity_names"][:2] == ["person_00", "person_01"]
    # the same file through identities-csv:
    csv = tmp_path / "ids.csv"
    csv.write_text("path,identity\n" + "".join(f"{p},{i}\n" for p, i in zip(ds.paths, ds.identities)))
    ds2 = PackedDataset(prepare(f"identities-csv:{csv}", tmp_path / "c.glaepack", size=24,
                                workers=1) and tmp_path / "c.glaepack")
    np.testing.assert_array_equal(ds2.identities, ds.identities)
    np.testing.assert_array_equal(np.asarray(ds2.images), np.asarray(ds.images))
    assert "identity_names" not in ds2.meta  # integer identities: no names
    with pytest.raises(ValueError, match="source spec must be"):
        read_source(f"identity:{people_dir}")
    # an identity file is no age data: age training says so before any work
    with pytest.raises(ValueError, match="ages must be finite"):
        glae.Model(image_size=24).fit(str(out), progress=False)


def test_cli_prepare_and_pretrain(people_dir, tmp_path, capsys):
    pack = tmp_path / "ids.glaepack"
    assert main(["prepare", f"identities:{people_dir}", str(pack), "--size", "32"]) == 0
    assert "41 used" in capsys.readouterr().out
    out = tmp_path / "run"
    rc = main(["pretrain", "--train", str(pack), "--out", str(out), "--no-progress",
               "--set", "image_size=32", "--set", "batch_size=16", "--set", "epochs=2",
               "--set", "milestones=[1]", "--set", "embed_dim=16", "--set", "val_identities=2",
               "--set", "augment.flip=false"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "pretrain epoch 2/2" in text and "verification acc" in text
    assert "--set pretrained=" in text
    lines = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in lines] == [0, 1, 2]
    m = glae.Model(backbone="resnet18", head="gap", image_size=32,
                   pretrained=str(out / "backbone.safetensors"))
    assert len(m.pretrained_report.loaded) == 100
    # a finished run says so; bad input is one line and status 2
    assert main(["pretrain", "--train", str(pack), "--out", str(out),
                 "--resume", str(out / "last.safetensors")]) == 0
    assert "the run is complete" in capsys.readouterr().out
    assert main(["pretrain", "--train", str(pack), "--out", str(out), "--set", "margin=1.5"]) == 2
    assert "margin must be < 1" in capsys.readouterr().err
    assert main(["pretrain", "--train", str(pack), "--out", str(out), "--set", "epoch=3"]) == 2
    assert "did you mean epochs" in capsys.readouterr().err
    ages = tmp_path / "ages.glaepack"
    glae.data.write_packed(ages, np.zeros((4, 32, 32, 3), np.uint8), [20, 30, 40, 50])
    assert main(["pretrain", "--train", str(ages), "--out", str(out)]) == 2
    assert "no image has an identity label" in capsys.readouterr().err
