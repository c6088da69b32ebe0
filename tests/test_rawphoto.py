"""Raw photos: glae.detect(image) (the callable module and its default detector),
prepare's detect-and-align mode, Model.predict_faces and `glae predict --detect`.
The detection tests use the shared MTCNN weights and UTKFace dev photos (skipped when
absent); the no-weights errors run everywhere."""
import glob
import os
import shutil

import numpy as np
import pytest

import glae
from glae import _C
from glae import detect as gd
from glae.data import PackedDataset, Record, prepare

from conftest import MTCNN_WEIGHTS as _W, UTKFACE_DEV as _U

MTCNN_WEIGHTS = os.environ.get("GLAE_MTCNN_WEIGHTS", _W)
UTKFACE_DEV = os.environ.get("GLAE_UTKFACE_DEV", _U)
HAVE = os.path.isdir(MTCNN_WEIGHTS) and os.path.isdir(UTKFACE_DEV)
needs_data = pytest.mark.skipif(not HAVE, reason="shared MTCNN weights or UTKFace dev photos absent")


@pytest.fixture
def weights():
    """The default detector pointed at the shared weights for one test, then forgotten."""
    gd.set_weights(MTCNN_WEIGHTS)
    yield MTCNN_WEIGHTS
    gd.set_weights(None)


@pytest.fixture
def no_weights(monkeypatch):
    """No way to find weights: no set_weights, no environment variable, no facenet_pytorch."""
    gd.set_weights(None)
    monkeypatch.delenv(gd.ENV_VAR, raising=False)
    monkeypatch.setattr(gd, "_default_weights_dir", lambda: None)


def photos(n, start=0):
    return sorted(glob.glob(os.path.join(UTKFACE_DEV, "*.jpg")))[start:start + n]


def rgb(path):
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def paste(face, shape=(300, 400), at=(50, 150), seed=0):
    """face pasted at (row, col) of a smooth synthetic background (no face-like texture)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([60 + 80 * xx / w, 90 + 60 * yy / h, 140 - 50 * xx / w], axis=2)
    bg += np.random.default_rng(seed).normal(0, 4, bg.shape)
    out = np.clip(bg, 0, 255).astype(np.uint8)
    r, c = at
    out[r:r + face.shape[0], c:c + face.shape[1]] = face
    return out


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def small_model():
    from glae.model import Model
    return Model(backbone="resnet18", head="gap", image_size=32, seed=0)


# ---- glae.detect ---------------------------------------------------------------------------


def test_module_is_callable_and_keeps_its_contents():
    assert callable(gd)
    for name in ("MTCNN", "largest_face", "most_confident", "to_rgb", "set_weights", "detect",
                 "weights_dir", "get_detector", "pick_face", "Face"):
        assert hasattr(gd, name), name


def test_without_weights_the_error_says_how_to_provide_them(no_weights, tmp_path):
    for call in (lambda: gd(np.zeros((50, 50, 3), np.uint8)), lambda: gd.weights_dir(), gd.get_detector):
        with pytest.raises(FileNotFoundError) as e:
            call()
        msg = str(e.value)
        assert "set_weights" in msg and "GLAE_MTCNN_WEIGHTS" in msg and "facenet" in msg
    # a wrong folder, whichever way it is given, is named
    with pytest.raises(FileNotFoundError, match="lacks pnet.pt"):
        gd.set_weights(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gd.detect(np.zeros((50, 50, 3), np.uint8), weights=tmp_path / "nope")
    # prepare in a detecting mode fails before writing anything
    img = tmp_path / "grey.png"
    from PIL import Image
    Image.fromarray(np.full((60, 60, 3), 128, np.uint8)).save(img)
    out = tmp_path / "x.glae"
    with pytest.raises(FileNotFoundError, match="GLAE_MTCNN_WEIGHTS"):
        prepare([Record(img, 30)], out, size=32, detect="missing", workers=1)
    assert not out.exists()
    # ...but "missing" with every landmark given, or "never", needs no weights
    lm = np.array([[20, 25], [40, 25], [30, 35], [22, 45], [38, 45]], np.float32)
    assert prepare([Record(img, 30, landmarks=lm)], out, size=32, detect="missing", workers=1).n_used == 1
    assert prepare([Record(img, 30)], out, size=32, detect="never", workers=1).n_used == 1


def test_environment_variable_is_used(no_weights, monkeypatch, tmp_path):
    monkeypatch.setenv(gd.ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="GLAE_MTCNN_WEIGHTS"):
        gd.weights_dir()
    if os.path.isdir(MTCNN_WEIGHTS):
        monkeypatch.setenv(gd.ENV_VAR, MTCNN_WEIGHTS)
        assert gd.weights_dir() == MTCNN_WEIGHTS
        assert gd.get_detector() is gd.get_detector(MTCNN_WEIGHTS)  # cached per folder


def test_pick_face_rules():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 50, 50], [5, 5, 20, 20]], np.float32)
    scores = np.array([0.99, 0.8, 0.9], np.float32)
    assert gd.pick_face(boxes, scores, "most_confident") == 0
    assert gd.pick_face(boxes, scores, "largest") == 1
    assert gd.pick_face(np.zeros((0, 4)), np.zeros(0), "largest") is None
    with pytest.raises(ValueError, match="pick"):
        gd.pick_face(boxes, scores, "first")


@needs_data
def test_bad_images_give_no_face_or_convert(weights):
    for im in (np.zeros((0, 0, 3), np.uint8), np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.uint8),
               np.full((80, 60), 128, np.uint8), np.zeros((40, 40, 4), np.uint8)):
        boxes, scores, lms = gd(im)
        assert boxes.shape == (0, 4) and scores.shape == (0,) and lms.shape == (0, 5, 2)
    face = rgb(photos(1)[0])
    gray = face.mean(axis=2).round().astype(np.uint8)
    rgba = np.concatenate([face, np.full(face.shape[:2] + (1,), 255, np.uint8)], axis=2)
    for im in (gray, rgba):
        boxes, scores, lms = gd(im)
        assert len(boxes) >= 1
    with pytest.raises(ValueError, match="shape"):
        gd(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(TypeError, match="numeric"):
        gd(np.array([["a"]]))


@needs_data
def test_detect_on_a_path_decodes_like_load_image(weights, tmp_path):
    """glae.detect(path) sees the pixels prepare and predict_faces see: EXIF orientation
    applied (an upright face stored sideways with Orientation 6), alpha on mid grey."""
    from PIL import Image
    from glae.data import load_image

    face = rgb(photos(1, start=7)[0])
    r, c = 50, 150
    scene = paste(face, at=(r, c))
    im = Image.fromarray(np.ascontiguousarray(np.rot90(scene, 1)))  # stored sideways (counter-clockwise)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the upright scene again
    path = tmp_path / "sideways.jpg"
    im.save(path, exif=exif, quality=95)
    shown = load_image(path)
    assert shown.shape == scene.shape
    got, want = gd(path), gd(shown)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert len(got[0]) == 1 and iou(got[0][0], (c, r, c + face.shape[1], r + face.shape[0])) > 0.6
    assert [np.asarray(a).shape for a in gd(str(path))] == [np.asarray(a).shape for a in got]

    rgba = np.concatenate([scene, np.full(scene.shape[:2] + (1,), 255, np.uint8)], axis=2)
    rgba[:, :100, 3] = 0  # transparent left strip: mid grey in load_image, black if alpha were dropped
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    shown = load_image(tmp_path / "alpha.png")
    assert (shown[:, :100] == 128).all()
    with Image.open(tmp_path / "alpha.png") as pil:
        as_pil = gd.to_rgb(pil)
    np.testing.assert_array_equal(gd.to_rgb(tmp_path / "alpha.png"), shown)
    np.testing.assert_array_equal(as_pil, shown)
    for g, w in zip(gd(tmp_path / "alpha.png"), gd(shown)):
        np.testing.assert_array_equal(g, w)


# ---- predict on a raw photo ----------------------------------------------------------------


@needs_data
def test_pasted_face_is_found_and_estimated(weights, small_model):
    face = rgb(photos(1, start=7)[0])
    r, c = 50, 150
    scene = paste(face, at=(r, c))
    pasted = (c, r, c + face.shape[1], r + face.shape[0])
    boxes, scores, lms = glae.detect.detect(scene)
    assert len(boxes) == 1 and scores[0] > 0.9
    assert iou(boxes[0], pasted) > 0.6
    cx, cy = (boxes[0, 0] + boxes[0, 2]) / 2, (boxes[0, 1] + boxes[0, 3]) / 2
    assert pasted[0] < cx < pasted[2] and pasted[1] < cy < pasted[3]
    assert np.all((lms[0, :, 0] > pasted[0]) & (lms[0, :, 0] < pasted[2]))
    assert np.all((lms[0, :, 1] > pasted[1]) & (lms[0, :, 1] < pasted[3]))

    faces = small_model.predict_faces(scene)
    assert len(faces) == 1
    f = faces[0]
    assert isinstance(f, gd.Face) and np.isfinite(f.age) and 0 <= f.age <= 100 and f.head in (0, 1)
    np.testing.assert_array_equal(f.box, boxes[0])
    # the estimate is predict() on the crop prepare would make (align_face, template, margin)
    crop = _C.align_face(scene, np.ascontiguousarray(lms[0]), 224, 0.1)
    g = small_model.predict_faces(scene, margin=0.1)[0]
    assert g.age == pytest.approx(float(small_model.predict(crop)[0]), abs=1e-4)


@needs_data
def test_every_face_is_estimated_and_no_face_gives_empty(weights, small_model, tmp_path):
    from PIL import Image
    big = rgb(photos(1, start=3)[0])
    small = np.asarray(Image.fromarray(rgb(photos(1, start=11)[0])).resize((110, 110), Image.BILINEAR))
    scene = paste(big, shape=(300, 480), at=(50, 20))
    scene[95:205, 340:450] = small
    boxes, scores, _ = gd(scene)
    assert len(boxes) == 2
    assert gd.pick_face(boxes, scores, "largest") == int(np.argmax([b[0] < 250 for b in boxes]))
    path = tmp_path / "two.png"
    Image.fromarray(scene).save(path)
    faces = small_model.predict_faces(str(path))
    assert len(faces) == 2 and all(np.isfinite(f.age) for f in faces)
    assert small_model.predict_faces(np.full((120, 160, 3), 128, np.uint8)) == []


# ---- prepare: detect-and-align ----------------------------------------------------------------


@needs_data
def test_prepare_missing_mode_packs_faces_and_reports_the_faceless(weights, tmp_path):
    from PIL import Image
    paths = photos(20, start=40)
    grey = tmp_path / "grey.jpg"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(grey)
    recs = [Record(p, 30 + i) for i, p in enumerate(paths)]
    recs.insert(5, Record(grey, 50))
    out = tmp_path / "faces.glae"
    rep = prepare(recs, out, size=64, margin=0.1, detect="missing", workers=2)
    assert rep.n_seen == 21 and rep.n_used == 20
    assert [(p.source, p.reason) for p in rep.skipped] == [(str(grey), "no face found (MTCNN)")]
    ds = PackedDataset(out)
    assert len(ds) == 20 and ds.paths == paths
    assert ds.meta["detect"] == "missing" and ds.meta["pick"] == "most_confident"
    assert ds.meta["n_detected"] == 20 and ds.meta["n_no_face"] == 1
    assert ds.meta["n_aligned_with_landmarks"] == 20
    # each crop is align_face with the chosen face's landmarks
    for i in (0, 13):
        img = rgb(paths[i])
        boxes, scores, lms = gd(img)
        want = _C.align_face(img, np.ascontiguousarray(lms[gd.most_confident(scores)]), 64, 0.1)
        np.testing.assert_array_equal(ds.images[i], want)
    # thread count restored
    assert glae.get_num_threads() == _C.get_num_threads()


@needs_data
def test_prepare_modes_given_landmarks_and_pick(weights, tmp_path):
    from PIL import Image
    p = photos(1, start=60)[0]
    img = rgb(p)
    fake = np.array([[60, 60], [140, 60], [100, 100], [70, 140], [130, 140]], np.float32)
    rec = Record(p, 40, landmarks=fake)
    out = tmp_path / "m.glae"
    given = _C.align_face(img, fake, 48, 0.0)
    prepare([rec], out, size=48, detect="missing", workers=1)
    np.testing.assert_array_equal(PackedDataset(out).images[0], given)  # landmarks given: kept
    prepare([rec], out, size=48, detect="always", workers=1)
    _, _, lms = gd(img)
    np.testing.assert_array_equal(PackedDataset(out).images[0], _C.align_face(img, lms[0], 48, 0.0))
    prepare([Record(p, 40)], out, size=48, detect="never", workers=1)
    np.testing.assert_array_equal(PackedDataset(out).images[0], _C.center_crop_resize(img, 48))
    # two faces: one is kept by the rule, the image is reported as a warning
    big = rgb(photos(1, start=3)[0])
    small = np.asarray(Image.fromarray(rgb(photos(1, start=11)[0])).resize((110, 110), Image.BILINEAR))
    scene = paste(big, shape=(300, 480), at=(50, 20))
    scene[95:205, 340:450] = small
    two = tmp_path / "two.png"
    Image.fromarray(scene).save(two)
    boxes, scores, lms = gd(scene)
    rep = prepare([Record(two, 20)], out, size=48, detect="missing", pick="largest", workers=1)
    assert len(rep.warnings) == 1 and "2 faces found" in rep.warnings[0].reason
    i = gd.largest_face(boxes)
    np.testing.assert_array_equal(PackedDataset(out).images[0], _C.align_face(scene, lms[i], 48, 0.0))
    for bad in ({"detect": "sometimes"}, {"detect": "missing", "pick": "first"}):
        with pytest.raises(ValueError, match="detect|pick"):
            prepare([rec], out, size=48, workers=1, **bad)


@needs_data
def test_prepare_corrupt_and_tiny_files_are_reported(weights, tmp_path):
    from PIL import Image
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    gray = tmp_path / "gray.png"
    Image.fromarray(rgb(photos(1)[0]).mean(axis=2).astype(np.uint8)).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(rgb(photos(1, start=1)[0])).convert("RGBA").save(rgba)
    rep = prepare([Record(empty, 1), Record(tiny, 2), Record(gray, 3), Record(rgba, 4)],
                  tmp_path / "o.glae", size=32, detect="missing", workers=2)
    reasons = {p.source: p.reason for p in rep.skipped}
    assert set(reasons) == {str(empty), str(tiny)}
    assert "no face" in reasons[str(tiny)] and "no face" not in reasons[str(empty)]
    assert rep.n_used == 2


# ---- command line ------------------------------------------------------------------------


@needs_data
def test_cli_prepare_detect_and_predict_detect(weights, tmp_path, capsys, small_model):
    from PIL import Image
    from glae.cli import main

    gd.set_weights(None)  # the CLI gets the folder from --mtcnn-weights
    folder = tmp_path / "utk"
    folder.mkdir()
    for p in photos(3, start=100):
        shutil.copy(p, folder / os.path.basename(p))
    Image.fromarray(np.full((100, 100, 3), 128, np.uint8)).save(folder / "30_0_0_20170101000000000.jpg")
    out = tmp_path / "u.glae"
    rc = main(["prepare", f"utkface:{folder}", str(out), "--size", "32", "--detect", "missing",
               "--mtcnn-weights", MTCNN_WEIGHTS, "--workers", "1"])
    text = capsys.readouterr().out
    assert rc == 0 and "3 used" in text and "no face found" in text
    assert len(PackedDataset(out)) == 3

    ckpt = tmp_path / "m.safetensors"
    small_model.save(ckpt)
    scene = tmp_path / "scene.png"
    Image.fromarray(paste(rgb(photos(1, start=7)[0]))).save(scene)
    rc = main(["predict", str(ckpt), str(scene), str(folder / "30_0_0_20170101000000000.jpg"),
               "--detect", "--mtcnn-weights", MTCNN_WEIGHTS, "--route", "vanilla"])
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines()
    assert rc == 0 and len(lines) == 1
    path, idx, box, age, head = lines[0].split("\t")  # cli bde6595 added the answering head
    assert path == str(scene) and idx == "0" and len(box.split(",")) == 4 and np.isfinite(float(age))
    assert head == "vanilla"
    assert "no face found" in cap.err
    rc = main(["predict", str(ckpt), str(scene), "--route", "vanilla"])  # without --detect: as before
    assert rc == 0 and len(capsys.readouterr().out.strip().splitlines()) == 1
