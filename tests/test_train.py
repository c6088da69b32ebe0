"""The two-stage trainer (glae/train.py) and the public Model's save/load/predict.

Small ResNet-18 models at 32 px on glae.data.synthetic_faces. The learning test is the only
slow one (marked); the others train a few steps on a few dozen images."""
import json
import os

import numpy as np
import pytest

import glae
from glae import _C
from glae import checkpoint as ckpt
from glae.config import Config
from glae.data import random_split, synthetic_faces
from glae.model import Model, load
from glae.train import G_BACKBONE, G_BALANCED, G_HEAD, Dataset, Trainer

SIZE = 32
AUG = {"crop": True, "flip": True, "color_jitter": False, "randaugment": False}


@pytest.fixture(scope="module", autouse=True)
def lean_machine():
    """One engine thread (on the shared 2-core machine the fastest) and no fsync in the
    checkpoint writes (each ResNet-18 checkpoint is ~90 MB; durability is tested in
    test_checkpoint.py, here only the content matters)."""
    threads = glae.get_num_threads()
    glae.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ckpt.os, "fsync", lambda fd: None)
        yield
    glae.set_num_threads(threads)


def small_cfg(**kw):
    base = dict(backbone="resnet18", head="fr+pa", image_size=SIZE, proj_depth=1, proj_width=32,
                batch_size=8, stage1_epochs=2, stage2_epochs=1, base_lr1=0.002, base_lr2=0.002,
                linear_scaling=False, augment=AUG, seed=3)
    base.update(kw)
    return Config(**base)


@pytest.fixture(scope="module")
def data():
    images, ages = synthetic_faces(56, size=SIZE, seed=5)
    tr, va = np.arange(40), np.arange(40, 56)  # 5 batches of 8 per epoch
    return Dataset(images[tr], ages[tr]), Dataset(images[va], ages[va])


def snapshot(core):
    """Every tensor (parameters and BN buffers) by name, the momentum, and the groups."""
    tensors = {name: core.get(name).copy() for name, *_ in core.param_table()}
    groups = {name: group for name, _s, _o, _n, _b, group, _nd in core.param_table()}
    buffers = {name for name, _s, _o, _n, is_buf, _g, _nd in core.param_table() if is_buf}
    return tensors, np.array(core.momentum, copy=True), groups, buffers


def assert_same_state(a, b):
    ta, ma = a[:2]
    tb, mb = b[:2]
    assert ta.keys() == tb.keys()
    diff = [k for k in ta if not np.array_equal(ta[k], tb[k])]
    assert not diff, f"tensors differ: {diff[:5]}"
    assert np.array_equal(ma, mb), "momentum differs"


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def strip_timing(entries):
    return [{k: v for k, v in e.items() if k not in ("seconds", "images_per_s")} for e in entries]


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory):
    """The uninterrupted run: 2 + 1 epochs of 5 batches (15 optimizer steps)."""
    train, val = data
    out = str(tmp_path_factory.mktemp("ref"))
    cfg = small_cfg()
    t = Trainer(Model.from_config(cfg), cfg, train, val, out_dir=out, progress=False, log=None)
    t.fit()
    return t, out, snapshot(t.core)


# -- learning ----------------------------------------------------------------------------
@pytest.mark.slow
def test_learns_on_synthetic_faces():
    """Validation MAE below half of always predicting the training mean (stage 1 only;
    about 20 s on a quiet machine, 60 s under heavy load)."""
    glae.set_num_threads(1)  # on the shared 2-core machine 1 thread is the fastest
    images, ages = synthetic_faces(600, size=SIZE, seed=0)
    tr, va = random_split(600, (0.8, 0.2), seed=0)
    train, val = Dataset(images[tr], ages[tr]), Dataset(images[va], ages[va])
    cfg = Config(backbone="resnet18", head="gap", image_size=SIZE, batch_size=16,
                 stage1_epochs=8, stage2_epochs=0, base_lr1=0.01, linear_scaling=False, seed=0,
                 augment={"crop": False, "flip": True, "color_jitter": False, "randaugment": False})
    t = Trainer(Model.from_config(cfg), cfg, train, val, progress=False, log=None)
    t.fit()
    mae = t.evaluate(stage=1)["vanilla"]["mae"]
    baseline = float(np.mean(np.abs(val.ages - train.ages.mean())))
    assert mae < 0.5 * baseline, (mae, baseline)


# -- stage 2 -------------------------------------------------------------------------------
def test_stage2_changes_only_the_balanced_head(data):
    train, val = data
    # an imbalanced label set: 28 images of age 30, 4 each of 5, 60 and 90
    ages = np.array([30.0] * 28 + [5.0] * 4 + [60.0] * 4 + [90.0] * 4, np.float32)
    train = Dataset(train.images, ages)
    cfg = small_cfg(stage1_epochs=1, stage2_epochs=2, stage2_sampler="class_balanced")
    t = Trainer(Model.from_config(cfg), cfg, train, None, progress=False, log=None)
    orders = {1: [], 2: []}
    loader = t.loader

    def spy(order, stage, epoch):
        orders[stage].append(np.array(order))
        return loader(order, stage, epoch)

    t.loader = spy
    t.fit(max_steps=t.batches_per_epoch())  # all of stage 1 (one epoch)
    before = snapshot(t.core)
    t.fit()  # stage 2
    after = snapshot(t.core)
    tensors0, mom0, groups, buffers = before
    tensors1, mom1 = after[:2]
    changed = {name for name in tensors0 if not np.array_equal(tensors0[name], tensors1[name])}
    backbone = {n for n, g in groups.items() if g == G_BACKBONE}
    head = {n for n, g in groups.items() if g == G_HEAD}
    balanced = {n for n, g in groups.items() if g == G_BALANCED}
    assert backbone & buffers, "the backbone's BN buffers are part of the check"
    assert not changed & backbone, sorted(changed & backbone)[:5]
    assert not changed & head, sorted(changed & head)[:5]
    # stage 2 starts from a copy of the vanilla head; every tensor of the balanced head then
    # moved away from it (FR conv, projection with its BN1d statistics, classifier)
    assert balanced == {"balanced." + n for n in head}
    same = [n for n in head if np.array_equal(tensors1[n], tensors1["balanced." + n])]
    assert not same, same
    assert head & buffers, "the head's BN1d running statistics are part of the check"
    # backbone and vanilla-head momentum untouched too
    b, e = t.core.group_range(G_BALANCED)
    assert np.array_equal(np.delete(mom0, np.s_[b:e]), np.delete(mom1, np.s_[b:e]))
    # sampling: stage 1 a permutation; stage 2 class-balanced (each present age ~1/4 of draws)
    assert all(np.array_equal(np.sort(o), np.arange(len(train))) for o in orders[1])
    drawn = np.concatenate(orders[2])
    assert len(orders[2]) == 2 and len(drawn) == 2 * len(train)
    freq = np.array([np.mean(ages[drawn] == a) for a in (5, 30, 60, 90)])
    assert np.all(np.abs(freq - 0.25) < 0.15), freq  # instance-balanced: 0.7 for age 30
    for epoch, order in enumerate(orders[2]):
        assert np.array_equal(order, _C.sample_class_balanced(
            _C.age_class(ages), cfg.seed * 2 + 1, epoch, len(train)))
    assert t.model.stage2_trained


# -- exact resume ----------------------------------------------------------------------------
def test_exact_resume(data, reference_run, tmp_path):
    """Stopped after k steps (Trainer.fit(max_steps=k) writes last.safetensors), resumed
    from that file and run to the end: bitwise the uninterrupted run (parameters, BN
    buffers, momentum, log). k = 7: mid-epoch in stage 1's second epoch; 10: the last step
    of stage 1; 12: mid-epoch in stage 2. One run makes all three stops (fit in pieces)."""
    import shutil

    train, val = data
    ref, ref_out, ref_state = reference_run
    cfg = small_cfg()
    first = tmp_path / "first"
    t = Trainer(Model.from_config(cfg), cfg, train, val, out_dir=str(first), progress=False, log=None)
    stops = {7: (1, 1, 2), 10: (1, 2, 0), 12: (2, 0, 2)}  # k -> (stage, epoch, batch) saved
    done = 0
    for k, where in stops.items():
        t.fit(max_steps=k - done)
        done = k
        saved = Trainer.resume(str(first / "last.safetensors"), train, val, progress=False, log=None)
        assert (saved.state["stage"], saved.state["epoch"], saved.state["batch"]) == where
        out = tmp_path / f"stop{k}"
        out.mkdir()
        shutil.copy(first / "last.safetensors", out / "last.safetensors")
        shutil.copy(first / "log.jsonl", out / "log.jsonl")
    del t, saved
    for k in stops:
        out = tmp_path / f"stop{k}"
        t2 = Trainer.resume(str(out / "last.safetensors"), train, val, out_dir=str(out),
                            progress=False, log=None)
        t2.fit()
        assert_same_state(snapshot(t2.core), ref_state)
        assert t2.state["step"] == ref.state["step"] and t2.state["stage"] == 2
        assert t2.model.stage2_trained
        # the log of the interrupted run is the same, line for line (timings aside)
        assert strip_timing(read_log(out)) == strip_timing(read_log(ref_out)), k


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    {"base_lr1": -0.1}, {"base_lr2": 0.0}, {"batch_size": 0}, {"batch_size": 2.5},
    {"head": "mlp"}, {"backbone": "resnet34"}, {"loss": "l2"}, {"stage2_loss": "x"},
    {"stage1_epochs": -1}, {"stage1_epochs": 1.5}, {"weight_decay": -1e-4},
    {"momentum": 1.0}, {"momentum": 0.0}, {"pct_start": 0.0}, {"sigma": float("nan")},
    {"image_size": 0}, {"milestones": (30, 10)}, {"milestones": (1.5,)},
    {"augment": {"mixup": True}}, {"augment": {"crop": "yes"}},
    {"augment": {"crop_scale": [0.9, 0.1]}}, {"nesterov": "true"}, {"route": "random"},
    {"proj_depth": 3}, {"threads": -1}, {"lam": -1.0}, {"loader_threads": -1},
    {"loader_threads": 1.5}, {"cuda_graph": True}, {"cuda_graph": 1}, {"cudnn_benchmark": True},
    {"cudnn_benchmark": "yes"}, {"gpu_math": "fp16"}, {"device": "gpu"},
    {"seed": 2**64}, {"threads": 1025}, {"image_size": 4097},
])
def test_bad_config_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        small_cfg(**bad)


def test_bad_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('head = "fr+pa"\n[optim]\nbatch_size = 32\nlearning_rate = 0.1\n')
    with pytest.raises(ValueError, match="learning_rate"):
        Config.from_toml(p)
    p.write_text('[optimizer]\nbatch_size = 32\n')  # unknown table
    with pytest.raises(ValueError, match="optimizer"):
        Config.from_toml(p)
    p.write_text('batch_size = 32\n[optim]\nbatch_size = 64\n')
    with pytest.raises(ValueError, match="twice"):
        Config.from_toml(p)
    p.write_text('batch_size = -4\n')
    with pytest.raises(ValueError, match="batch_size"):
        Config.from_toml(p)
    p.write_text('batch_size = \n')
    with pytest.raises(ValueError, match="TOML"):
        Config.from_toml(p)
    p.write_text('[model]\nhead = "gap"\n[optim]\nbatch_size = 32\nmilestones = [2, 4]\n')
    c = Config.from_toml(p)
    assert (c.head, c.batch_size, c.milestones) == ("gap", 32, (2, 4))


def test_bad_trainer_arguments_fail_before_work(data, tmp_path):
    train, val = data
    out = tmp_path / "out"
    cfg = small_cfg()
    m = Model.from_config(cfg)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(m, cfg.replace(batch_size=64), train, val, out_dir=str(out), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(m, cfg.replace(batch_size=1), train, val, out_dir=str(out), progress=False)
    with pytest.raises(ValueError, match="validation"):
        Trainer(m, cfg.replace(stage2_loss="lae"), train, None, out_dir=str(out), progress=False)
    with pytest.raises(ValueError, match="empty"):
        Trainer(m, cfg, Dataset(train.images[:0], train.ages[:0]), val, out_dir=str(out))
    # a OneCycle that cannot run this many steps (pct_start * total = 1: zero-length phase)
    with pytest.raises(ValueError, match="schedule"):
        Trainer(m, cfg.replace(pct_start=1 / 10, stage1_epochs=2), train, val,
                out_dir=str(out), progress=False)
    with pytest.raises(ValueError, match="max_steps"):
        Trainer(m, cfg, train, val, progress=False).fit(max_steps=0)
    assert not out.exists(), "nothing written before the arguments were checked"


def test_ages_beyond_the_last_class_fail_before_work(data, tmp_path):
    """An age above num_classes - 1 is refused when the Trainer is built, naming its index
    in the data set (label_distribution would refuse it only inside some batch)."""
    train, val = data
    cfg = small_cfg()
    m = Model.from_config(cfg)
    for age in (150.0, 100.4):
        ages = train.ages.copy()
        ages[17] = age
        with pytest.raises(ValueError, match=rf"training set: ages\[17\] = {age:g} is above 100"):
            Trainer(m, cfg, Dataset(train.images, ages), val, progress=False)
    ages = val.ages.copy()
    ages[3] = 101
    with pytest.raises(ValueError, match=r"validation set: ages\[3\] = 101 is above 100"):
        m.fit((train.images, train.ages), (val.images, ages), out_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    # 100 itself is the last class
    ages = train.ages.copy()
    ages[0] = 100
    Trainer(m, cfg, Dataset(train.images, ages), val, progress=False)


def test_config_typos_name_the_closest_field():
    with pytest.raises(ValueError, match=r"batchsize \(did you mean batch_size\?\)"):
        Model(batchsize=8)
    with pytest.raises(ValueError, match=r"unknown config key\(s\): colour$"):
        small_cfg().replace(colour=1)
    with pytest.raises(ValueError, match=r"stage1_epoch \(did you mean stage1_epochs\?\)"):
        Config.from_dict({"stage1_epoch": 3})


def test_small_crops_are_upsampled_with_a_note(data):
    train, val = data
    cfg = small_cfg(image_size=2 * SIZE)
    said = []
    Trainer(Model.from_config(cfg), cfg, train, val, progress=False, log=said.append)
    assert said == [f"note: the training crops are {SIZE} px and are upsampled to image_size "
                    f"{2 * SIZE} (prepare them at that size, or set image_size={SIZE})"]
    said.clear()
    Trainer(Model.from_config(small_cfg()), small_cfg(), train, val, progress=False,
            log=said.append)
    assert not said


def test_a_file_and_its_pil_image_are_the_same_input(tmp_path):
    """predict decodes a path and converts a PIL image the same way (load_image's
    conversion), a 16-bit grayscale PNG included."""
    from PIL import Image

    m = Model.from_config(small_cfg())
    g = np.random.default_rng(4).integers(0, 65536, (40, 40), dtype=np.uint16)
    f = tmp_path / "deep.png"
    Image.fromarray(g).save(f)
    with Image.open(f) as im:
        assert im.mode.startswith("I")
        np.testing.assert_array_equal(m.predict(im), m.predict(str(f)))


def test_predict_from_several_threads_takes_turns(data):
    """The engine refuses a second call while one runs; Model.predict queues them."""
    from concurrent.futures import ThreadPoolExecutor

    _, val = data
    m = Model.from_config(small_cfg())
    batch = np.ascontiguousarray(val.images[:8])
    want = m.predict(batch, batch_size=2)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: m.predict(batch, batch_size=2), range(8)))
    for g in got:
        np.testing.assert_array_equal(g, want)


def test_strided_images_are_accepted_for_training(data):
    train, _ = data
    strided = np.repeat(train.images, 2, axis=2)[:, :, ::2]
    assert not strided.flags.c_contiguous
    d = Dataset(strided, train.ages)
    assert d.images.flags.c_contiguous and np.array_equal(d.images, train.images)


def test_trainer_predict_and_evaluate_take_what_fit_takes(data, reference_run):
    t = reference_run[0]
    _, val = data
    want = t.predict(val)
    assert set(want) == {"vanilla", "balanced", "routed", "choice"}
    assert want["routed"].shape == (len(val),)
    as_tuple = t.predict((val.images, val.ages))
    for k in want:
        np.testing.assert_array_equal(as_tuple[k], want[k])
    rep = t.evaluate((val.images, val.ages))
    assert rep.keys() == {"vanilla", "balanced", "routed"}
    assert rep["routed"]["mae"] == t.evaluate()["routed"]["mae"]
    with pytest.raises(TypeError, match="Model.predict|tuple"):
        t.predict(val.images)
    no_val = Trainer(t.model, t.cfg, t.train, None, progress=False)
    with pytest.raises(ValueError, match="no validation set"):
        no_val.evaluate()
    with pytest.raises(ValueError, match="empty"):
        t.evaluate((val.images[:0], val.ages[:0]))


def test_predict_refuses_what_it_cannot_answer(data, reference_run):
    _, val = data
    batch = np.ascontiguousarray(val.images[:3])
    fresh = Model.from_config(small_cfg())  # stage 2 never ran: its balanced head is noise
    assert fresh.predict(batch).shape == (3,)  # the vanilla head by default
    for route in ("balanced", "smaller", "bigger"):
        with pytest.raises(ValueError, match="balanced head was never trained"):
            fresh.predict(batch, route=route)
    m = reference_run[0].model
    with pytest.raises(ValueError, match="route must be"):
        m.predict(batch, route="best")
    for bs in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            m.predict(batch, batch_size=bs)
    for nothing in (None, 5):
        with pytest.raises(TypeError, match="images must be"):
            m.predict(nothing)
    x = m.preprocess(batch)
    x[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.evaluate_batch(x)


def test_checkpoint_state_entry_must_be_an_object(tmp_path):
    """Finding (issue 17): a null or string 'state' entry gave Python's own messages
    ('NoneType' object is not iterable, Expecting value ...). Entries rewritten through
    checkpoint.save, so their checksums are right and only the value is wrong."""
    path = str(tmp_path / "m.safetensors")
    Model.from_config(small_cfg()).save(path)
    tensors, meta = ckpt.load(path)
    for state, msg in [(None, "got null"), ("not json", "got a string that is not JSON"),
                       ("[1, 2]", "got an array"), ('"x"', "got a string"), (7, "got a number"),
                       ([], "got an array")]:
        ckpt.save(path, tensors, {**meta, "state": state})
        with pytest.raises(ckpt.CheckpointError, match=rf"{path}: metadata entry 'state' "
                                                       rf"\(the trainer state\) must be a JSON "
                                                       rf"object, {msg}$"):
            load(path)
    # a JSON object held in a string (as some writers stored it) still loads
    ckpt.save(path, tensors, {**meta, "state": json.dumps(meta["state"])})
    assert load(path).stage2_trained is False


def test_resume_rejects_bad_checkpoints(data, reference_run, tmp_path):
    train, val = data
    _, ref_out, _ = reference_run
    last = os.path.join(ref_out, "last.safetensors")
    blob = open(last, "rb").read()
    trunc = tmp_path / "truncated.safetensors"
    trunc.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        Trainer.resume(str(trunc), train, val)
    foreign = tmp_path / "foreign.safetensors"
    ckpt.save(str(foreign), {"fc.weight": np.zeros((3, 4), np.float32)}, {"format": "pt"})
    with pytest.raises(ckpt.CheckpointError, match="not a glae checkpoint"):
        Trainer.resume(str(foreign), train, val)
    saved = tmp_path / "model.safetensors"
    load(last).save(str(saved))  # a Model.save file has no trainer state
    with pytest.raises(ckpt.CheckpointError, match="trainer state"):
        Trainer.resume(str(saved), train, val)
    with pytest.raises(ValueError, match="same training set"):
        Trainer.resume(last, Dataset(train.images[:32], train.ages[:32]), val)
    with pytest.raises(FileNotFoundError):
        Trainer.resume(str(tmp_path / "nope.safetensors"), train, val)


# -- log and checkpoints --------------------------------------------------------------------
def test_log_and_checkpoints(data, reference_run):
    train, val = data
    ref, out, _ = reference_run
    log = read_log(out)
    assert [(e["stage"], e["epoch"]) for e in log] == [(1, 1), (1, 2), (2, 1)]
    full = {"n", "mae", "cmae", "aar_lae", "aar_glae", "group", "cs", "per_age", "shot"}
    for e in log:
        assert set(e["train"]) >= {"total", "lr"} and np.isfinite(e["train"]["total"])
        heads = {"vanilla"} if e["stage"] == 1 else {"vanilla", "balanced", "routed"}
        assert set(e["val"]) == heads
        for h in heads:
            assert full <= set(e["val"][h]), (h, full - set(e["val"][h]))
            assert set(e["val"][h]["group"]) == {"0-17", "18-65", "66-100"}
        if e["stage"] == 2:
            assert "routing" in e["val"]["routed"]
    for name in ("best", "last"):
        m = load(os.path.join(out, f"{name}.safetensors"))
        assert m.stage2_trained and m.config == ref.cfg
    m = load(os.path.join(out, "last.safetensors"))
    assert_same_state(snapshot(m.core), snapshot(ref.core))
    # the file's momentum is packed in table order, without the flat buffer's padding
    tensors, _ = ckpt.load(os.path.join(out, "last.safetensors"))
    rows = [(off, n) for _, _, off, n, buf, *_ in ref.core.param_table() if not buf]
    assert ref.core.momentum.size > sum(n for _, n in rows)  # there is padding to leave out
    np.testing.assert_array_equal(tensors["optimizer.momentum"], np.concatenate(
        [ref.core.momentum[off:off + n] for off, n in rows]))
    # the training set's age histogram travels with the checkpoint (eval's MAE by shot)
    np.testing.assert_array_equal(m.train_ages, np.sort(np.rint(train.ages)))
    assert m.align is None  # synthetic crops: no alignment recorded
    x = val.images[:5]
    assert np.array_equal(m.predict(x), ref.model.predict(x))


# -- the public Model ---------------------------------------------------------------------------
def test_model_save_load_and_predict_inputs(data, reference_run, tmp_path):
    from PIL import Image

    _, val = data
    ref = reference_run[0].model
    path = str(tmp_path / "m.safetensors")
    assert ref.save(path) == path
    m = load(path)
    assert m.stage2_trained == ref.stage2_trained and m.config == ref.config
    batch = np.ascontiguousarray(val.images[:4])
    want = ref.predict(batch)
    assert want.shape == (4,) and np.all(np.isfinite(want))
    assert np.array_equal(m.predict(batch), want)
    for route in ("vanilla", "balanced", "smaller"):
        assert np.array_equal(m.predict(batch, route=route), ref.predict(batch, route=route))
    files = []
    for i, im in enumerate(batch):
        f = tmp_path / f"face{i}.png"
        Image.fromarray(im).save(f)
        files.append(str(f))
    # a path, a PIL image, an (H, W, 3) array: the same answer; a list of paths: the batch's
    # (a batch of 1 runs other GEMM shapes than a batch of 4: equal to rounding)
    for i in range(2):
        one = m.predict(batch[i])
        assert one.shape == (1,)
        assert np.array_equal(m.predict(files[i]), one)
        assert np.array_equal(m.predict(Image.open(files[i])), one)
        np.testing.assert_allclose(one, want[i:i + 1], rtol=0, atol=1e-3)
    assert np.array_equal(m.predict(files), want)
    ages, probs, head = m.predict(batch, return_distribution=True, return_head=True)
    assert probs.shape == (4, 101) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert np.allclose(ages, probs @ np.arange(101), atol=1e-3) and set(head) <= {0, 1}
    with pytest.raises(ValueError):
        m.predict(np.zeros((2, SIZE, SIZE), np.uint8))
    with pytest.raises(ValueError):
        m.predict(batch.astype(np.float32))
    # bad input at the API surface: a clear exception naming the problem
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        m.predict(str(tmp_path / "nowhere.png"))
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg"):
        m.predict(str(notes))
    with pytest.raises(ValueError, match="backbone"):
        Model(backbone="resnet34")


def test_label_sigma_is_the_configs_unless_asked_for_the_datas(data):
    """GLAE eq. 1: sigma = Config.sigma for every image, even where the data has its own;
    sigma_from_data takes the data's (NaN: Config.sigma for that image)."""
    train, val = data
    own = np.full(len(train), np.nan, np.float32)
    own[::3] = 4.5
    d = Dataset(train.images, train.ages, own)
    cfg = small_cfg(sigma=1.5)
    t = Trainer(Model.from_config(cfg), cfg, d, val, progress=False)
    assert np.all(t.sigmas == 1.5)
    cfg = cfg.replace(sigma_from_data=True)
    t = Trainer(Model.from_config(cfg), cfg, d, val, progress=False)
    np.testing.assert_array_equal(t.sigmas, np.where(np.isnan(own), np.float32(1.5), own))
    # what the loader hands the step: the trainer's sigmas, batch by batch
    order = np.arange(len(d), dtype=np.int64)
    seen = np.concatenate([sig for _, _, sig in t.loader(order, stage=1, epoch=0)])
    np.testing.assert_array_equal(seen, t.sigmas[:len(seen)])


def test_dataset_sigmas_nan_means_none():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    ages = np.array([1, 2, 3, 4], np.float32)
    assert Dataset(images, ages, np.full(4, np.nan, np.float32)).sigmas is None
    d = Dataset(images, ages, np.array([1.5, np.nan, 2.0, np.nan], np.float32))
    assert np.isnan(d.sigmas).sum() == 2
    for bad in ([1, 2, 0, 1], [1, 2, -1, 1], [1, np.inf, 1, 1]):
        with pytest.raises(ValueError, match="sigmas"):
            Dataset(images, ages, np.array(bad, np.float32))
    with pytest.raises(ValueError, match="sigmas"):
        Dataset(images, ages, np.ones(3, np.float32))


def test_dataset_images_must_be_square():
    with pytest.raises(ValueError, match="square"):
        Dataset(np.zeros((2, 8, 6, 3), np.uint8), np.array([1, 2], np.float32))


def test_checkpoint_records_the_alignment_of_the_training_data(tmp_path):
    """A packed file from prepare records its size and margin; the trainer's checkpoints
    carry them, and predict_faces uses them as its defaults."""
    from glae import checkpoint as ckpt
    from glae import detect as gd
    from glae.data import synthetic_faces, write_packed
    from glae.train import as_dataset

    images, ages = synthetic_faces(10, size=SIZE, seed=3)
    path = str(tmp_path / "p.glae")
    write_packed(path, images, ages, meta={"size": SIZE, "margin": 0.25})
    cfg = small_cfg()
    t = Trainer(Model.from_config(cfg), cfg, as_dataset(path), None, out_dir=str(tmp_path),
                progress=False, log=None)
    assert t.train.align == {"size": SIZE, "margin": 0.25}
    ck = t.save("last")
    m = load(ck)
    assert m.align == (SIZE, 0.25)
    # prepare also says how many faces it aligned with landmarks: a model trained on
    # centre crops is warned about when it aligns detected faces
    write_packed(path, images, ages, meta={"size": SIZE, "margin": 0.25,
                                           "n_aligned_with_landmarks": 2})
    t = Trainer(Model.from_config(cfg), cfg, as_dataset(path), None, out_dir=str(tmp_path),
                progress=False, log=None)
    assert t.train.align == {"size": SIZE, "margin": 0.25, "landmarks": 0.2}
    m = load(t.save("last"))
    assert m.data_info["align"]["landmarks"] == 0.2

    class OneFace(gd.MTCNN):
        def __init__(self):
            pass

        def detect(self, img):
            lm = np.array([[[12, 13], [20, 13], [16, 18], [13, 23], [19, 23]]], np.float32)
            return np.array([[4, 4, 28, 30]], np.float32), np.array([0.99], np.float32), lm

    face = np.zeros((40, 40, 3), np.uint8)
    with pytest.warns(UserWarning, match="only 20% of this model's training crops"):
        faces = m.predict_faces(face, weights=OneFace())
    assert len(faces) == 1
    assert sorted(m.train_ages.tolist()) == sorted(np.rint(ages).tolist())
    # a corrupt entry is named, not half-used
    tensors, meta = ckpt.load(ck)
    meta["data"] = {"train_age_hist": [3, -1], "align": None}
    ckpt.save(ck, tensors, meta)
    with pytest.raises(ckpt.CheckpointError, match="training-data metadata"):
        load(ck)


def test_packed_subset_is_accepted_as_training_data(tmp_path):
    """A PackedDataset.subset (a lazy index view into the memmap) becomes a Dataset."""
    from glae.data import PackedDataset, synthetic_faces, write_packed
    from glae.train import as_dataset

    images, ages = synthetic_faces(12, size=16, seed=1)
    path = str(tmp_path / "s.glae")
    write_packed(path, images, ages)
    sub = PackedDataset(path).subset([1, 5, 7])
    ds = as_dataset(sub)
    assert len(ds) == 3 and ds.sigmas is None
    np.testing.assert_array_equal(ds.images, images[[1, 5, 7]])
    np.testing.assert_array_equal(ds.ages, ages[[1, 5, 7]])


def test_divergence_stops_with_a_clear_error(tmp_path):
    """A non-finite loss stops training at once with advice, instead of NaN weights."""
    images, ages = synthetic_faces(64, size=32, seed=3)
    # fr+pa's holistic branch is a chain of linear layers without normalisation: a rate
    # far too high sends its loss to inf/NaN within a few steps
    m = Model(head="fr+pa", image_size=32, batch_size=8, stage1_epochs=3, stage2_epochs=0,
              base_lr1=10.0, linear_scaling=False)
    t = Trainer(m, m.config, Dataset(images, ages), None, out_dir=str(tmp_path), progress=False,
                log=None)
    with pytest.raises(FloatingPointError, match="training diverged in stage 1"):
        t.fit()
    # it stopped inside the first epoch: no checkpoint holds the diverged weights
    assert t.state["epoch"] == 0
    assert not (tmp_path / "last.safetensors").exists()


# -- LAE stage 2: the stage-1 MAE of the final stage-1 model ------------------------------------
def test_lae_stage2_uses_the_final_stage1_val_mae(data, tmp_path):
    """eval_every = 2 does not divide stage1_epochs = 3: the last stage-1 evaluation (epoch 2)
    is of an older model. The mae in KL + (L1 - mae)^2 must be the final stage-1 model's."""
    train, val = data
    cfg = small_cfg(head="gap", stage1_epochs=3, stage2_epochs=1, eval_every=2,
                    stage2_loss="lae")
    t = Trainer(Model.from_config(cfg), cfg, train, val, out_dir=str(tmp_path), progress=False,
                log=None)
    seen = []
    train_step = t.core.train_step_async

    def spy(*args, **kw):
        if kw.get("stage") == 2:
            seen.append((kw["loss"], kw["mae"]))
        return train_step(*args, **kw)

    t.core.train_step_async = spy
    t.fit()
    assert len(seen) == t.batches_per_epoch()
    # stage 2 leaves the backbone and the vanilla head alone: evaluating the vanilla head now
    # gives the final stage-1 model's validation MAE
    final = t.evaluate(stage=1)["vanilla"]["mae"]
    assert all(loss == "lae_cls" for loss, _ in seen)
    assert all(mae == final for _, mae in seen), (seen[0], final)
    assert t.state["stage1_val_mae"] == final and t.state["stage1_val_epoch"] == 3
    stale = [e["val"]["vanilla"]["mae"] for e in read_log(str(tmp_path)) if e["stage"] == 1
             and "val" in e]
    assert len(stale) == 1 and stale[0] != final  # epoch 2's: what the bug passed


# -- loader threads ------------------------------------------------------------------------------
def test_loader_threads_do_not_change_training(data):
    """Config.loader_threads changes only speed: every augmentation is keyed by (seed, epoch,
    sample), so 1 and 2 worker threads give bitwise the same batches, losses and weights."""
    train, _ = data
    aug = {"crop": True, "flip": True, "color_jitter": True, "randaugment": True}
    runs = []
    for threads in (1, 2):
        cfg = small_cfg(head="gap", augment=aug, loader_threads=threads)
        t = Trainer(Model.from_config(cfg), cfg, train, None, progress=False, log=None)
        assert t.loader_threads() == threads
        batches = [x for x, _a, _s in t.loader(t.epoch_indices(1, 0), 1, 0)]
        losses = []
        step = t.step
        t.step = lambda *a: losses.append(step(*a)) or losses[-1]
        t.fit(max_steps=3)
        runs.append((batches, losses, t.core.params.copy()))
    (b1, l1, p1), (b2, l2, p2) = runs
    assert len(b1) == len(b2) == 5 and all(np.array_equal(x, y) for x, y in zip(b1, b2))
    assert b1[0].dtype == np.uint8  # the pixels: the model normalises them (test_uint8_input)
    assert len(l1) == 3 and l1 == l2
    assert np.array_equal(p1, p2)
    assert Config().loader_threads == 0
    cfg = small_cfg(loader_threads=0)
    assert Trainer(Model.from_config(cfg), cfg, train, None, progress=False,
                   log=None).loader_threads() == min(os.cpu_count() or 1, 8)


def test_bf16_training_run_and_checkpoint(data, tmp_path):
    """Config(gpu_math="bf16") trains both stages on the CPU's bf16 layers (the GPU's
    definition), its losses fall, and a checkpoint brings the math back."""
    train, val = data
    cfg = small_cfg(gpu_math="bf16", stage1_epochs=2, stage2_epochs=1)
    model = Model.from_config(cfg)
    assert model.core.math == "bf16"
    t = Trainer(model, cfg, train, val, out_dir=str(tmp_path), progress=False, log=None)
    t.fit()
    log = [e for e in read_log(str(tmp_path)) if e["stage"] == 1]
    assert log[-1]["train"]["total"] < log[0]["train"]["total"]
    path = os.path.join(str(tmp_path), "final.glae")
    model.save(path)
    again = load(path)
    assert again.config.gpu_math == "bf16" and again.core.math == "bf16"
    np.testing.assert_allclose(again.predict(train.images[:4]), model.predict(train.images[:4]),
                               rtol=1e-6)


def test_progress_bars_only_on_a_terminal(monkeypatch):
    """Redirected to a file or a pipe (a log, CI), training prints its epoch lines without
    a progress bar's per-step carriage-return updates; on a terminal the bar is shown."""
    import io
    import sys

    from glae.train import _progress

    items = [1, 2, 3]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert _progress(items, 3, "x", True) is items
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = _progress(items, 3, "x", True)
    assert bar is not items and list(bar) == items
    assert _progress(items, 3, "x", False) is items
    # in Jupyter tqdm.auto gives a subclass of the notebook bar (defined in tqdm.auto, so
    # its module name says nothing) and stderr is no terminal: the widget is still shown
    from tqdm.notebook import tqdm as notebook_tqdm
    from tqdm.std import tqdm as std_tqdm

    from glae.train import _bar_wanted

    class JupyterAuto(notebook_tqdm):
        pass

    assert _bar_wanted(JupyterAuto, io.StringIO())
    assert not _bar_wanted(std_tqdm, io.StringIO())
    assert _bar_wanted(std_tqdm, Terminal())


def test_a_run_no_better_than_the_median_is_noted(data):
    """An untrained model (learning rate ~0) answers about a constant: the log says, at the
    end of the stage, that the validation MAE does not beat the training median (once: not
    after the first epoch too); a learning run says nothing."""
    train, val = data
    said = []
    cfg = small_cfg(base_lr1=1e-12, base_lr2=1e-12, stage1_epochs=2, stage2_epochs=0)
    Trainer(Model.from_config(cfg), cfg, train, val, progress=False, log=said.append).fit()
    med = float(np.median(train.ages))
    notes = [s for s in said if s.startswith("note: validation MAE")]
    assert len(notes) == 1 and f"median age ({med:g})" in notes[0], said
    t = Trainer(Model.from_config(cfg), cfg, train, val, progress=False, log=said.append)
    said.clear()
    t._note_if_no_better_than_the_median(0.0)
    assert not said


# ---- stage 2's start and sampler (issue 19) --------------------------------------------

@pytest.mark.parametrize("init", ["copy", "reinit", "reinit_classifier"])
def test_stage2_head_init(data, init):
    """copy: the balanced head starts as the vanilla head (the papers); reinit: as built
    (stage 1 never touches it: cRT's fresh classifier); reinit_classifier: copied, but the
    last linear layer as built."""
    train, _ = data
    cfg = small_cfg(stage1_epochs=1, stage2_epochs=1, stage2_head_init=init)
    t = Trainer(Model.from_config(cfg), cfg, train, progress=False, log=None)
    built = {name: t.core.get(name).copy() for name, *_ in t.core.param_table()}
    t.fit(max_steps=5)  # stage 1, one epoch: the vanilla head moved, the balanced did not
    for name in built:
        if name.startswith("balanced."):
            np.testing.assert_array_equal(t.core.get(name), built[name])
    t._start_stage2()
    for name in built:
        if not name.startswith("balanced."):
            continue
        fresh = init == "reinit" or (init == "reinit_classifier" and name in
                                     ("balanced.cls.weight", "balanced.cls.bias"))
        want = built[name] if fresh else t.core.get(name[len("balanced."):])
        np.testing.assert_array_equal(t.core.get(name), want, err_msg=name)
    assert not np.array_equal(t.core.get("cls.weight"), built["cls.weight"])
    b, e = t.core.group_range(G_BALANCED)
    assert not np.asarray(t.core.momentum)[b:e].any()


def test_stage2_samplers(data):
    """Each stage2_sampler is its C sampler on the training ages' classes; stage 1 is
    always instance-balanced."""
    train, _ = data
    labels = glae.metrics.age_class(train.ages, 101)
    for sampler, want in [
            ("class_balanced", lambda s, e: _C.sample_class_balanced(labels, s, e, len(labels))),
            ("instance", lambda s, e: _C.sample_instance_balanced(len(labels), s, e)),
            ("sqrt", lambda s, e: _C.sample_class_power(labels, s, e, len(labels), power=0.5)),
            ("progressive", None)]:
        cfg = small_cfg(stage2_sampler=sampler, stage2_epochs=3)
        t = Trainer(Model.from_config(cfg), cfg, train, progress=False, log=None)
        seed2 = cfg.seed * 2 + 1
        np.testing.assert_array_equal(t.epoch_indices(1, 0),
                                      _C.sample_instance_balanced(len(labels), cfg.seed * 2, 0))
        for epoch in range(3):
            got = t.epoch_indices(2, epoch)
            if want is None:  # instance-balanced at first, class-balanced at the end
                alpha = epoch / 2
                ref = _C.sample_class_power(labels, seed2, epoch, len(labels), power=0.0,
                                            alpha=alpha)
            else:
                ref = want(seed2, epoch)
            np.testing.assert_array_equal(got, ref, err_msg=f"{sampler} epoch {epoch}")
    assert Config().stage2_sampler == "sqrt"  # docs/training.md, "Long-tail study"
    with pytest.raises(ValueError, match="stage2_sampler"):
        small_cfg(stage2_sampler="balanced")
    with pytest.raises(ValueError, match="stage2_head_init"):
        small_cfg(stage2_head_init="fresh")


def test_routing_criteria_through_the_model(data, reference_run):
    """Config.route's criteria of ops/route.h answer through Model.predict and
    evaluate_batch: kl_margin 0 is Adaptive Routing ("smaller"); blend 0 / 1 and an age
    gate that keeps every age are the single heads."""
    t = reference_run[0]
    model, cfg = t.model, t.model.config
    _, val = data
    x = model.preprocess(list(val.images), dtype=np.uint8)
    try:
        ref = model.evaluate_batch(x, route="smaller")
        model.config = cfg.replace(route="kl_margin", route_threshold=0.0)
        got = model.evaluate_batch(x, route="kl_margin")
        np.testing.assert_array_equal(got["head"], ref["head"])
        for k in ("age", "vanilla_age", "balanced_age"):
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-3)
        for w, k in ((0.0, "vanilla_age"), (1.0, "balanced_age")):
            model.config = cfg.replace(route="blend", route_threshold=w)
            np.testing.assert_allclose(model.predict(list(val.images)), ref[k], rtol=1e-4, atol=1e-3)
        model.config = cfg.replace(route="age", route_ages=(0, 100))
        ages, heads = model.predict(list(val.images), return_head=True)
        assert not heads.any()
        np.testing.assert_allclose(ages, ref["vanilla_age"], rtol=1e-4, atol=1e-3)
    finally:
        model.config = cfg
    for bad in ({"route": "blend", "route_threshold": 1.5}, {"route_ages": (65, 18)},
                {"route_threshold": float("nan")}, {"route_ages": (18,)}):
        with pytest.raises(ValueError, match="route_"):
            cfg.replace(**bad)
    assert Config.from_json(cfg.replace(route_ages=(10, 70)).to_json()).route_ages == (10, 70)
