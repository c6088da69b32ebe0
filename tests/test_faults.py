"""Training that survives faults (issue 17): a run killed with SIGKILL at random steps of
both stages and resumed each time ends bitwise where an uninterrupted run ends; a
non-finite loss stops training naming the step, the loss part and the last good
checkpoint (or skips the batch); a full disk while writing a checkpoint leaves the
previous one whole; undecodable images are listed and skipped by prepare."""
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import glae
from glae import checkpoint as ckpt
from glae.config import Config
from glae.data import PackedDataset, Record, prepare, synthetic_faces
from glae.model import Model
from glae.train import Dataset, Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "fault_worker.py")
STEPS1, STEPS2 = 6, 3  # the worker's run: 2 epochs x 3 batches, then 1 x 3


def _run(out, every, kill=None):
    args = [sys.executable, WORKER, str(out), str(every)]
    if kill:
        args += [str(k) for k in kill]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def _final(out):
    tensors, meta = ckpt.load(os.path.join(out, "last.safetensors"))
    state = meta["state"]
    return tensors, (state["stage"], state["epoch"], state["batch"], state["step"])


@pytest.fixture()
def scratch():
    # the checkpoints are 90 MB each: in memory where there is a tmpfs (a kill -9 keeps
    # the page cache, so this tests the same thing as a disk)
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=base) as d:
        yield d


@pytest.mark.slow
def test_kill_nine_ten_times_and_resume_bitwise(scratch):
    """Ten SIGKILLs at random steps -- six in stage 1, four in stage 2, half right after an
    update and half in the middle of writing a checkpoint -- each followed by a resume
    from last.safetensors: the final weights, BN statistics and momentum are bitwise those
    of an uninterrupted run (which wrote checkpoints at the epochs' ends only)."""
    seed = int(os.environ.get("GLAE_FAULT_SEED", time.time_ns() % 2 ** 31))
    rng = random.Random(seed)
    ref = os.path.join(scratch, "ref")
    r = _run(ref, 0)
    assert r.returncode == 0, r.stderr[-3000:]
    want, where = _final(ref)
    assert where == (2, 1, 0, STEPS2)
    os.remove(os.path.join(ref, "last.safetensors"))
    points = sorted(rng.sample([(g, p) for g in range(1, STEPS1 + 1) for p in ("step", "write")], 6)) + \
        sorted(rng.sample([(g, p) for g in range(STEPS1 + 1, STEPS1 + STEPS2 + 1) for p in ("step", "write")], 4))
    out = os.path.join(scratch, "killed")
    for g, phase in points:
        r = _run(out, 1, (g, phase, rng.randint(1, 60)))
        assert r.returncode == -signal.SIGKILL, (seed, g, phase, r.returncode, r.stderr[-3000:])
    r = _run(out, 1)
    assert r.returncode == 0, (seed, r.stderr[-3000:])
    got, where = _final(out)
    assert where == (2, 1, 0, STEPS2)
    assert set(got) == set(want)
    diff = [k for k in want if not np.array_equal(got[k], want[k])]
    assert not diff, (f"seed {seed}, kills {points}: differ", diff[:5])


# ---------------------------------------------------------------- non-finite losses

def _tiny(tmp_path, **kw):
    images, ages = synthetic_faces(16, size=16, seed=5)
    kw = {"stage1_epochs": 2, **kw}
    cfg = Config(backbone="resnet18", head="gap", image_size=16, batch_size=4,
                 stage2_epochs=0, base_lr1=0.002, linear_scaling=False, seed=3, threads=1,
                 loader_threads=1, augment={"crop": False, "flip": False, "color_jitter": False,
                                            "randaugment": False}, **kw)
    logs = []
    t = Trainer(Model.from_config(cfg), cfg, Dataset(images, ages), out_dir=str(tmp_path),
                progress=False, log=logs.append)
    return t, logs


def _poison_step(t, at, what="params"):
    """Optimizer step number `at` (0-based) goes wrong: "params": a NaN in the classifier's
    weights before it (its loss is NaN, as after a diverged update); "grads": a NaN in its
    gradient after the backward pass (the loss stays finite)."""
    real = t.core.train_step_async
    calls = [0]
    fc = [(off, n) for name, _s, off, n, *_ in t.core.param_table() if name == "fc.weight"][0]

    def spy(x, ages, sigma, **kw):
        hit = calls[0] == at
        calls[0] += 1
        if hit and what == "params":
            flat = np.array(t.core.params)
            flat[fc[0]] = np.nan
            t.core.write_flat("params", flat)
        r = real(x, ages, sigma, **kw)
        if hit and what == "grads":
            g = np.array(t.core.grads)
            g[fc[0] + 1] = np.inf
            t.core.write_flat("grads", g)
        return r

    t.core.train_step_async = spy


def test_nonfinite_loss_stops_naming_step_part_and_last_checkpoint(tmp_path):
    t, _ = _tiny(tmp_path, checkpoint_every=2)
    _poison_step(t, 5)
    with pytest.raises(FloatingPointError) as e:
        t.fit()
    msg = str(e.value)
    assert "stage 1, epoch 2, step 5" in msg
    assert "non-finite loss part: holistic = nan" in msg, msg
    last = os.path.join(str(tmp_path), "last.safetensors")
    # the last checkpoint before the bad step: step 4 (the end of epoch 1, checkpoint_every=2)
    assert f"The last good checkpoint: {last} (stage 1, epoch 1, batch 0, step 4)" in msg, msg
    assert "on_nonfinite='skip'" in msg
    state = ckpt.load(last)[1]["state"]
    assert state["step"] == 4
    tensors = ckpt.load(last)[0]
    assert all(np.isfinite(v).all() for v in tensors.values())


def test_nonfinite_stop_before_any_checkpoint(tmp_path):
    t, _ = _tiny(tmp_path)
    _poison_step(t, 1)
    with pytest.raises(FloatingPointError, match="step 1 .*The last good checkpoint: none written yet"):
        t.fit()


def test_nonfinite_skip_leaves_the_batch_out(tmp_path):
    """on_nonfinite="skip": a batch whose gradient is not finite (its loss is) is left out:
    the weights are those of the same run without that batch's update."""
    t, logs = _tiny(tmp_path, on_nonfinite="skip", stage1_epochs=1)
    _poison_step(t, 2, "grads")
    t.fit()
    assert t.state["skipped"] == [[1, 0, 2, 2]]  # stage, epoch, batch, step
    assert any("skipped the batch of stage 1, epoch 1, step 2: non-finite gradient" in m for m in logs), logs
    assert np.isfinite(t.core.params).all()
    u, _ = _tiny(tmp_path / "u", stage1_epochs=1)
    real = u.core.sgd_step
    calls = [0]

    def no_update_at_2(*a, **k):
        calls[0] += 1
        if calls[0] != 3:
            return real(*a, **k)

    u.core.sgd_step = no_update_at_2
    u.fit()
    np.testing.assert_array_equal(t.core.params, u.core.params)
    np.testing.assert_array_equal(t.core.momentum, u.core.momentum)
    # a NaN loss is skipped too, and the epoch's mean loss counts only the batches used
    v, logs = _tiny(tmp_path / "v", on_nonfinite="skip")
    real_losses = v.core.async_losses
    n = [0]

    def nan_loss_at_1(back=0):
        n[0] += 1
        d = real_losses(back)
        return {**d, "local": float("nan")} if n[0] == 2 else d

    v.core.async_losses = nan_loss_at_1
    v.fit(max_steps=2)
    assert v.state["skipped"] == [[1, 0, 1, 1]]
    assert any("non-finite local" in m for m in logs)


def test_nonfinite_weights_are_never_saved(tmp_path):
    t, _ = _tiny(tmp_path)
    t.fit(max_steps=1)
    good = (tmp_path / "last.safetensors").read_bytes()
    flat = np.array(t.core.params)
    flat[3] = np.inf
    t.core.write_flat("params", flat)
    with pytest.raises(FloatingPointError, match="params are not finite.*was not written.*last good checkpoint"):
        t.save("last")
    assert (tmp_path / "last.safetensors").read_bytes() == good


def test_checkpoint_every_bounds_the_lost_steps(tmp_path):
    t, _ = _tiny(tmp_path, checkpoint_every=3)
    saved = []
    real = Trainer.save

    def spy(self, which="last", path=None):
        saved.append((self.state["epoch"], self.state["batch"], self.state["step"]))
        return real(self, which, path)

    t.save = spy.__get__(t)
    t.fit()
    # steps 3 (mid epoch 1) and 4 (end of epoch 1), 6 (mid), 8 (end of epoch 2)
    assert saved == [(0, 3, 3), (1, 0, 4), (1, 2, 6), (2, 0, 8)]
    with pytest.raises(ValueError, match="checkpoint_every"):
        Config(checkpoint_every=-1)
    with pytest.raises(ValueError, match="on_nonfinite"):
        Config(on_nonfinite="ignore")


# ---------------------------------------------------------------- a full disk

DISK_FULL = r"""
import os, resource, signal, sys
sys.path.insert(0, sys.argv[2])
import numpy as np
from glae import checkpoint as ckpt
from glae.config import Config
from glae.data import synthetic_faces
from glae.model import Model
from glae.train import Dataset, Trainer, load_checkpoint
from glae.model import _Restore
out = sys.argv[1]
images, ages = synthetic_faces(8, size=16, seed=5)
cfg = Config(backbone="resnet18", head="gap", image_size=16, batch_size=4, stage1_epochs=1, stage2_epochs=0,
             threads=1, loader_threads=1, linear_scaling=False)
t = Trainer(Model.from_config(cfg), cfg, Dataset(images, ages), out_dir=out, progress=False, log=None)
t.fit(max_steps=1)
last = os.path.join(out, "last.safetensors")
before = open(last, "rb").read()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, resource.RLIM_INFINITY))
try:
    t.fit()  # the epoch's end writes last.safetensors: the disk is 'full' half way
except OSError as e:
    print("OSError:", e)
else:
    sys.exit("no error")
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
assert open(last, "rb").read() == before, "the previous checkpoint changed"
assert sorted(os.listdir(out)) == ["last.safetensors"], os.listdir(out)
model, cfg2, state = load_checkpoint(last, _Restore)
assert state["step"] == 1
print("ok")
"""


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    """RLIMIT_FSIZE in a child process: the write of the next checkpoint fails half way
    (EFBIG, as ENOSPC would); the previous checkpoint is byte for byte intact and loads,
    and no temporary file is left."""
    r = subprocess.run([sys.executable, "-c", DISK_FULL, str(tmp_path), os.path.dirname(HERE)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr[-3000:]
    assert "cannot write" in r.stdout and "last.safetensors: File too large" in r.stdout, r.stdout


# ---------------------------------------------------------------- prepare

def test_prepare_lists_and_skips_undecodable_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    good = []
    for i in range(3):
        p = tmp_path / f"good{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(p)
        good.append(p)
    jpg = tmp_path / "full.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(jpg)
    bad = {
        "truncated.jpg": jpg.read_bytes()[:200],
        "random.png": rng.integers(0, 256, 500, dtype=np.uint8).tobytes(),
        "empty.jpg": b"",
        "badcrc.png": bytearray(good[0].read_bytes()),
        "text.jpg": b"not an image at all\n",
    }
    bad["badcrc.png"][40] ^= 0xFF
    recs = [Record(str(p), 30) for p in good]
    for name, blob in bad.items():
        (tmp_path / name).write_bytes(bytes(blob))
        recs.append(Record(str(tmp_path / name), 30))
    (tmp_path / "folder.jpg").mkdir()
    recs.append(Record(str(tmp_path / "folder.jpg"), 30))
    recs.append(Record(str(tmp_path / "absent.jpg"), 30))
    if os.path.exists("/dev/null"):
        recs.append(Record("/dev/null", 30))

    def crop(img, lm, size, margin):
        return np.ascontiguousarray(img[:size, :size])

    rep = prepare(recs, tmp_path / "out.glae", size=16, transform=crop, workers=2)
    assert rep.n_used == 3
    skipped = {os.path.basename(p.source) for p in rep.skipped}
    assert skipped >= set(bad) | {"folder.jpg", "absent.jpg"}
    assert len(PackedDataset(tmp_path / "out.glae")) == 3


def test_prepare_survives_a_decoder_bug(tmp_path, monkeypatch):
    """An exception Pillow was never meant to raise (a plugin's KeyError on a hostile
    file) skips that image with its reason; the others are prepared."""
    P = sys.modules["glae.data.prepare"]

    real = P.load_image

    def flaky(path):
        if "b" in os.path.basename(path):
            raise KeyError("bad tag")
        return real(path)

    monkeypatch.setattr(P, "load_image", flaky)
    from PIL import Image
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / name)
    rep = prepare([Record(str(tmp_path / n), 20) for n in ("a.png", "b.png")], tmp_path / "o.glae", size=8,
                  transform=lambda img, lm, size, m: np.ascontiguousarray(img[:size, :size]), workers=1)
    assert rep.n_used == 1
    assert [(os.path.basename(p.source), p.reason) for p in rep.skipped] == [("b.png", "cannot decode: KeyError: 'bad tag'")]


@pytest.mark.filterwarnings("ignore:Image size")  # Pillow's own warning at open, above 89 M
def test_image_declaring_huge_size_is_refused_before_decoding(tmp_path):
    """Found by fuzzing load_image: a 60-byte PNG declaring 13,000 x 13,000 pixels made
    Pillow (which only warns below 179 M pixels) allocate ~0.5 GB before finding the data
    missing (the fuzzing run's peak RSS: 1.9 GB). Refused from the header now."""
    import struct
    import zlib

    from glae.data import DecodeError, load_image
    from glae.data import readers

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    for w, h in ((13000, 13000), (64_000_001, 1), (9000, 9000)):
        png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
               + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
        p = tmp_path / "bomb.png"
        p.write_bytes(png)
        # glae's message, from the header: Pillow's own check (a DecompressionBombError
        # above 179 M pixels, after a warning) never ran, nor its allocation
        with pytest.raises(DecodeError, match=f"image too large: {w} x {h} pixels, more than glae reads"):
            load_image(p)
    assert readers.MAX_IMAGE_PIXELS == 64_000_000
