"""Identity pre-training (LAE sec. 2.3): the C model _C.PretrainModel (backbone + embedding
+ AM-softmax) against NumPy and finite differences, the verification figure, the pairs,
the Pretrainer on synthetic people (its loss falls, its backbone loads as `pretrained`,
it resumes exactly) and bad input."""
import json
import os

import numpy as np
import pytest

import glae
from glae import _C
from glae.data.synthetic import synthetic_identities
from glae.model import CoreModel
from glae.pretraining import (IdentityData, PretrainConfig, Pretrainer, split_identities,
                              verification, verification_pairs)
from glae.weights import PretrainedError, load_pretrained

from helpers import assert_no_leak


def small_model(**kw):
    args = dict(embed_dim=8, s=4.0, m=0.2, seed=0)
    args.update(kw)
    return _C.PretrainModel(3, **args)


def table(m):
    return {n: (off, num) for n, _, off, num, buf, *_ in m.param_table() if not buf}


# ---- the C model --------------------------------------------------------------------------

def test_parameters_are_the_backbone_then_the_head():
    m = small_model()
    rows = m.param_table()
    names = [r[0] for r in rows]
    assert names[0] == "conv1.weight" and "layer4.1.bn2.running_var" in names
    assert names[-6:] == ["embedding.0.weight", "embedding.1.weight", "embedding.1.bias",
                          "embedding.1.running_mean", "embedding.1.running_var",
                          "amsoftmax.weight"]
    shapes = {r[0]: r[1] for r in rows}
    assert shapes["embedding.0.weight"] == (8, 512) and shapes["amsoftmax.weight"] == (3, 8)
    assert all(r[5] == 0 for r in rows if not r[0].startswith(("embedding", "amsoftmax")))
    # the backbone's tensors are an age model's, name for name and shape for shape
    age = CoreModel(backbone="resnet18", head="gap", input_size=32)
    want = {r[0]: r[1] for r in age.param_table() if r[5] == 0}
    assert {n: s for n, s in shapes.items() if not n.startswith(("embedding", "amsoftmax"))} == want
    b, e = m.group_range("backbone")
    hb, he = m.group_range("head")
    assert b == 0 < e <= hb < he == m.params.size
    assert m.config == {"backbone": "resnet18", "num_ids": 3, "embed_dim": 8, "s": 4.0,
                        "m": pytest.approx(0.2), "seed": 0, "math": "fp32"}
    assert m.device == "cpu"


def test_embedding_is_pool_linear_batchnorm(rng):
    m = small_model()
    for name, v in (("embedding.1.running_mean", rng.standard_normal(8)),
                    ("embedding.1.running_var", rng.uniform(0.5, 2.0, 8)),
                    ("embedding.1.weight", rng.uniform(0.5, 1.5, 8)),
                    ("embedding.1.bias", rng.standard_normal(8))):
        m.set(name, v.astype(np.float32))
    x = rng.standard_normal((3, 40, 40, 3)).astype(np.float32)
    e = m.embed(x)
    assert e.shape == (3, 8) and e.dtype == np.float32
    # the same backbone in an age model gives the feature map
    age = CoreModel(backbone="resnet18", head="gap", input_size=40)
    for name, _, _, _, _, group, _ in age.param_table():
        if group == 0:
            age.set(name, m.get(name))
    feat = age.forward(x)["feature"].astype(np.float64)
    h = feat.mean(axis=(1, 2)) @ m.get("embedding.0.weight").astype(np.float64).T
    want = ((h - m.get("embedding.1.running_mean")) / np.sqrt(m.get("embedding.1.running_var") + 1e-5)
            * m.get("embedding.1.weight") + m.get("embedding.1.bias"))
    np.testing.assert_allclose(e, want, rtol=1e-4, atol=1e-4)
    # uint8 pixels normalised by the model: the same as normalising first
    u8 = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    f32 = ((u8.astype(np.float32) - 127.5) / 128).astype(np.float32)
    np.testing.assert_allclose(m.embed(u8, norm="glae"), m.embed(f32), rtol=1e-5, atol=1e-5)


def test_train_step_gradients_are_the_finite_differences(rng):
    """The whole chain (backbone, pool, Linear, BatchNorm1d, AM-softmax, batch mean) by
    central differences of the step's own loss, in the head, the last block and the stem."""
    m = small_model()
    x = rng.standard_normal((4, 32, 32, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 1], np.int32)
    m.zero_grad()
    m.train_step(x, y)
    g = m.grads.copy()
    tab = table(m)
    for name, eps, rtol in (("amsoftmax.weight", 1e-2, 2e-3), ("embedding.0.weight", 1e-2, 5e-3),
                            ("embedding.1.weight", 1e-2, 2e-3), ("embedding.1.bias", 1e-2, 2e-3),
                            ("layer4.1.bn2.weight", 1e-2, 5e-3), ("conv1.weight", 2e-4, 5e-2)):
        off, num = tab[name]
        for i in np.argsort(-np.abs(g[off:off + num]))[:2]:
            p = m.params[off + i]
            m.write_flat("params", np.array([p + eps], np.float32), off + i)
            fp = m.train_step(x, y)  # BN in training mode: running statistics do not matter
            m.write_flat("params", np.array([p - eps], np.float32), off + i)
            fm = m.train_step(x, y)
            m.write_flat("params", np.array([p], np.float32), off + i)
            assert (fp - fm) / (2 * eps) == pytest.approx(g[off + i], rel=rtol, abs=1e-4), name


def test_gradients_accumulate_and_sgd_steps(rng):
    m = small_model()
    x = rng.standard_normal((4, 32, 32, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0], np.int32)
    m.zero_grad()
    m.train_step(x, y)
    g1 = m.grads.copy()
    m.train_step(x, y)
    np.testing.assert_allclose(m.grads, 2 * g1, rtol=1e-5, atol=1e-6)  # GEMMs add in place
    m.zero_grad()
    assert not m.grads.any()
    m.train_step(x, y)
    before = m.params.copy()
    m.sgd_step(0.1, momentum=0.0, weight_decay=0.0)
    np.testing.assert_allclose(m.params, before - np.float32(0.1) * m.grads, rtol=1e-6, atol=1e-7)


def test_loss_falls_on_a_fixed_batch(rng):
    m = small_model(s=10.0, m=0.2)
    x = rng.standard_normal((6, 32, 32, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    losses = []
    for step in range(8):
        m.zero_grad()
        losses.append(m.train_step(x, y))
        m.sgd_step(0.05, first_step=step == 0)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(num_ids=1), ValueError, "num_ids must be >= 2"),
    (dict(m=-0.1), ValueError, "margin m must be finite and >= 0"),
    (dict(m=2.5), ValueError, "degenerate"),
    (dict(s=0.0), ValueError, "scale s must be finite and > 0"),
    (dict(embed_dim=0), ValueError, "embed_dim must be >= 1"),
    (dict(backbone="vgg"), ValueError, "backbone must be 'resnet18' or 'resnet50'"),
    (dict(device="tpu"), ValueError, "device must be 'cpu', 'cuda' or 'cuda:N'"),
    (dict(math="fp8"), ValueError, "math must be"),
])
def test_model_bad_arguments(kwargs, exc, msg):
    args = dict(num_ids=3, embed_dim=8)
    args.update(kwargs)
    with pytest.raises(exc, match=msg):
        _C.PretrainModel(**args)


def test_train_step_bad_input(rng):
    m = small_model()
    x = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"labels\[1\] = 3 is outside \[0, 3\)"):
        m.train_step(x, np.array([0, 3], np.int32))
    with pytest.raises(TypeError, match="labels must have dtype int32"):
        m.train_step(x, np.array([0, 1], np.int64))
    with pytest.raises(ValueError, match="at least 2 per step"):
        m.train_step(x[:1], np.array([0], np.int32))
    with pytest.raises(ValueError, match="labels: dimension 0 must be 2"):
        m.train_step(x, np.array([0], np.int32))
    with pytest.raises(ValueError, match="give norm="):
        m.train_step(np.zeros((2, 32, 32, 3), np.uint8), np.array([0, 1], np.int32))
    with pytest.raises(ValueError, match="x: dimension 3 must be 3"):
        m.embed(np.zeros((2, 8, 8, 4), np.float32))
    with pytest.raises(ValueError, match="the batch is empty"):
        m.embed(np.zeros((0, 8, 8, 3), np.float32))
    with pytest.raises(RuntimeError, match="already built"):
        m.__init__(3)


def test_no_leak(rng):
    m = small_model()
    x = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    y = np.array([0, 1], np.int32)
    assert_no_leak(m.embed, x, n=20)
    assert_no_leak(m.train_step, x, y, n=10)


# ---- verification figure and pairs --------------------------------------------------------

def ref_verification(scores, same, far=1e-3):
    """An independent NumPy reference of the figures: every threshold tried in turn."""
    s, y = np.asarray(scores, np.float64), np.asarray(same, bool)
    levels = np.unique(s)[::-1]  # the distinct scores, highest first
    thresholds = [levels[0] + 1e-6, *((levels[:-1] + levels[1:]) / 2), levels[-1] - 1e-6]
    best, thr = -1.0, None
    for t in thresholds:
        acc = 0.5 * (np.mean(s[y] > t) + np.mean(s[~y] <= t))
        if acc > best + 1e-12:
            best, thr = acc, t
    tar = None
    if (~y).sum() * far >= 1:
        neg = np.sort(s[~y])[::-1]
        tar = float(np.mean(s[y] > neg[int(np.floor(far * (~y).sum()))]))
    return best, thr, tar


def test_verification_matches_a_brute_force_reference():
    rng = np.random.default_rng(3)
    for n_same, n_diff in ((50, 1500), (7, 30), (200, 200)):
        same = np.r_[np.ones(n_same, bool), np.zeros(n_diff, bool)]
        s = np.round(rng.normal(0.4 * same, 0.3), 2).astype(np.float32)  # with ties
        v = verification(s, same)
        acc, thr, tar = ref_verification(s, same)
        assert v["accuracy"] == pytest.approx(acc) and v["threshold"] == pytest.approx(thr, abs=1e-6)
        assert v["tar_at_far"] == (None if tar is None else pytest.approx(tar))
        assert v["mean_same"] == pytest.approx(s[same].mean(), rel=1e-6)
        assert v["n_same"] == n_same and v["n_diff"] == n_diff


def test_pair_cosines(rng):
    e = rng.standard_normal((5, 7)).astype(np.float32)
    e[3] = 0.0
    a, b = np.array([0, 1, 2, 3, 4], np.int64), np.array([1, 1, 4, 0, 2], np.int64)
    c = _C.pair_cosines(e, a, b)
    ref = [float(e[i] @ e[j] / np.linalg.norm(e[i]) / np.linalg.norm(e[j])) if i != 3 else 0.0
           for i, j in zip(a, b)]
    np.testing.assert_allclose(c, ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"pair 0 = \(5, 1\) indexes outside the 5"):
        _C.pair_cosines(e, np.array([5], np.int64), np.array([1], np.int64))
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        _C.pair_cosines(e, a, b[:2].copy())
    with pytest.raises(ValueError, match=r"scores\[1\] = nan is not finite"):
        verification(np.array([0.1, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match=r"far must lie in \(0, 1\)"):
        verification(np.zeros(2), np.array([True, False]), far=0.0)
    with pytest.raises(TypeError, match="same must have dtype bool"):
        _C.verification(np.zeros(2, np.float32), np.zeros(2, np.int64))


def test_verification_figures():
    same = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    v = verification(np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1, 0.0, -0.5]), same)
    assert v["accuracy"] == 1.0 and 0.3 < v["threshold"] < 0.7
    assert v["n_same"] == 3 and v["n_diff"] == 5 and v["tar_at_far"] is None
    assert v["mean_same"] == pytest.approx(0.8)
    # one different pair above one same pair: the best cut leaves one error
    v = verification(np.array([0.9, 0.8, 0.4, 0.5, 0.2, 0.1, 0.0, -0.5]), same)
    # (calling the top 4 "same": 3/3 same and 4/5 different right, better than the top 2)
    assert v["accuracy"] == pytest.approx(0.5 * (3 / 3 + 4 / 5))
    # scores that say nothing: chance, whatever the counts
    assert verification(np.zeros(8), same)["accuracy"] == 0.5
    assert verification(np.array([0.0, 0.1, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9]), same)["accuracy"] == 0.5
    # no pairs of one kind: no figure
    assert verification(np.ones(3), np.ones(3, bool))["accuracy"] is None


def test_tar_at_far():
    rng = np.random.default_rng(0)
    neg = rng.uniform(-1, 0.5, 2000)
    neg[:2] = 0.95  # two impostors above every genuine pair: within FAR 1e-3 of 2000
    pos = np.linspace(0.6, 0.9, 100)
    v = verification(np.concatenate([pos, neg]), np.r_[np.ones(100, bool), np.zeros(2000, bool)])
    assert v["tar_at_far"] == 1.0
    neg[:3] = 0.95  # three: the threshold moves above every genuine pair
    v = verification(np.concatenate([pos, neg]), np.r_[np.ones(100, bool), np.zeros(2000, bool)])
    assert v["tar_at_far"] == 0.0


def test_verification_pairs():
    ids = np.repeat(np.arange(5), [1, 2, 3, 4, 5])
    i, j, same = verification_pairs(ids, 1000, seed=0)
    assert same.sum() == 0 + 1 + 3 + 6 + 10  # every same pair when there are few
    assert (~same).sum() == 1000
    assert np.all(ids[i[same]] == ids[j[same]]) and np.all(ids[i[~same]] != ids[j[~same]])
    assert np.all(i[same] < j[same])
    i2, j2, s2 = verification_pairs(ids, 1000, seed=0)
    assert np.array_equal(i, i2) and np.array_equal(j, j2)
    i, j, same = verification_pairs(ids, 7, seed=1)  # sampled: distinct pairs
    assert same.sum() == 7 and len(set(zip(i[same], j[same]))) == 7
    assert np.all(ids[i[same]] == ids[j[same]])
    i, j, same = verification_pairs(np.zeros(4, np.int64), 10, seed=0)  # one identity
    assert same.sum() == 6 and (~same).sum() == 0


def test_split_identities_holds_out_whole_people():
    ids = np.repeat(np.arange(10), [1, 3, 3, 3, 3, 3, 3, 3, 3, 3])
    data = IdentityData(np.zeros((len(ids), 16, 16, 3), np.uint8), ids)
    tr, va = split_identities(data, 3, seed=0)
    assert not set(ids[tr]) & set(ids[va]) and len(set(ids[va])) == 3 and 0 not in ids[va]
    tr, va = split_identities(data, 0.5, seed=0)
    assert len(set(ids[va])) == round(0.5 * 9)


# ---- the Pretrainer on synthetic people ---------------------------------------------------

@pytest.fixture(scope="module")
def people():
    return synthetic_identities(16, 6, 32, seed=0)


def tiny(**kw):
    cfg = dict(image_size=32, batch_size=16, epochs=3, milestones=[2], base_lr=0.05,
               linear_scaling=False, embed_dim=32, scale=10.0, margin=0.2, val_identities=4,
               val_pairs=200, loader_threads=1)
    cfg.update(kw)
    return PretrainConfig(**cfg)


def test_pretrain_learns_and_its_backbone_loads(people, tmp_path):
    x, ids, _ = people
    out = tmp_path / "p1"
    t = glae.pretrain((x, ids), out_dir=str(out), config=tiny(), progress=False, log=None)
    assert t.num_ids == 12 and len(t.train) == 72 and len(t.val) == 24
    lines = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in lines] == [0, 1, 2, 3]
    losses = [e["loss"] for e in lines[1:]]
    assert losses[-1] < losses[0]
    assert lines[-1]["lr"] == pytest.approx(0.005)
    v = lines[-1]["verification"]
    assert v["n_same"] == 4 * 15 and v["n_diff"] == 200 and 0.5 <= v["accuracy"] <= 1.0
    # the backbone file: torchvision names and layout, what pretrained= takes
    path = str(out / "backbone.safetensors")
    model = glae.Model(backbone="resnet18", head="gap", image_size=32, pretrained=path)
    assert len(model.pretrained_report.loaded) == 100 and not model.pretrained_report.skipped
    np.testing.assert_array_equal(model.core.get("layer3.1.conv2.weight"),
                                  t.model.get("layer3.1.conv2.weight"))
    np.testing.assert_array_equal(model.core.get("bn1.running_var"), t.model.get("bn1.running_var"))
    tensors, meta = glae.checkpoint.load(path)
    assert meta["format"] == "glae-backbone-1" and meta["arch"] == "resnet18"
    assert meta["verification"] == v and tensors["conv1.weight"].shape == (64, 3, 7, 7)
    with pytest.raises(PretrainedError, match="the weights are for resnet18, the model is resnet50"):
        load_pretrained(CoreModel(backbone="resnet50", head="gap", input_size=32), path)


def test_pretrain_resumes_exactly(people, tmp_path):
    x, ids, _ = people
    cfg = tiny(epochs=2, batch_size=24, milestones=[1])
    whole = Pretrainer((x, ids), cfg, progress=False, log=None).fit()  # no files: faster
    first = Pretrainer((x, ids), cfg, out_dir=str(tmp_path / "b"), progress=False, log=None)
    first.fit(max_steps=4)  # 3 steps per epoch: stops in the middle of the second
    assert first.state["epoch"] == 1 and first.state["batch"] == 1
    rest = Pretrainer.resume(str(tmp_path / "b" / "last.safetensors"), (x, ids),
                             out_dir=str(tmp_path / "b"), progress=False, log=None).fit()
    assert rest.state["epoch"] == 2 and rest.state["step"] == whole.state["step"] == 6
    np.testing.assert_array_equal(rest.model.params, whole.model.params)
    np.testing.assert_array_equal(rest.model.momentum, whole.model.momentum)
    np.testing.assert_array_equal(rest.model.buffers, whole.model.buffers)
    assert rest.history[-1]["loss"] == whole.history[-1]["loss"]
    with pytest.raises(ValueError, match="resume needs the same data"):
        Pretrainer.resume(str(tmp_path / "b" / "last.safetensors"), (x[:90], ids[:90]),
                          progress=False, log=None)
    with pytest.raises(ValueError, match="not a glae pre-training checkpoint"):
        Pretrainer.resume(str(tmp_path / "b" / "backbone.safetensors"), (x, ids), log=None)


def test_pretrain_bad_input(people):
    x, ids, _ = people
    with pytest.raises(ValueError, match="no image has an identity label"):
        Pretrainer((x, np.full(len(x), -1)), tiny(), log=None)
    with pytest.raises(ValueError, match="at least 2 training identities"):
        Pretrainer((x[:6], ids[:6]), tiny(val_identities=0, batch_size=4), log=None)
    with pytest.raises(ValueError, match="batch_size 100 is larger than the training set"):
        Pretrainer((x, ids), tiny(batch_size=100), log=None)
    notes = []
    t = Pretrainer((x, np.where(np.arange(len(x)) < 6, -1, ids)), tiny(val_identities=0),
                   log=notes.append)
    assert t.pairs is None and any("6 images without an identity" in n for n in notes)
    assert any("no verification pairs" in n for n in notes)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(margin=1.0), "margin must be < 1"),
    (dict(margin=-0.1), "margin must be >= 0"),
    (dict(scale=0), "scale must be > 0"),
    (dict(milestones=[7, 3]), "milestones must be increasing"),
    (dict(batch_size=1), "batch_size must be >= 2"),
    (dict(backbone="resnet34"), "backbone must be one of"),
    (dict(augment={"cutout": True}), "augment: unknown options"),
])
def test_config_bad_values(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        PretrainConfig(**kwargs)


def test_config_keys_and_defaults():
    cfg = PretrainConfig()
    assert (cfg.epochs, cfg.milestones, cfg.scale, cfg.margin, cfg.embed_dim) == \
        (18, (7, 14, 16), 30.0, 0.35, 512)
    assert cfg.lr() == pytest.approx(0.1) and cfg.replace(batch_size=512).lr() == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"epoch \(did you mean epochs\?\)"):
        cfg.replace(epoch=3)
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg


def test_lae_pretrain_config_loads():
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "lae_pretrain.toml")
    cfg = PretrainConfig.from_toml(path)
    assert cfg == PretrainConfig(**{**PretrainConfig().to_dict(), **{
        k: getattr(cfg, k) for k in ("image_size", "val_identities", "val_pairs")}})
    with open(path) as f:
        header = "".join(line for line in f if line.startswith("#"))
    assert "Table 2" in header and "prepare" in header and "pretrained=" in header


# ---- on a GPU (skipped without one) --------------------------------------------------------

from devices import needs_gpu  # noqa: E402


@needs_gpu
def test_cuda_model_matches_the_cpu(rng):
    """The same step through the CUDA twins (fp32 math): loss, every gradient, the SGD
    step and the eval-mode embedding agree with the CPU definition."""
    cpu, gpu = small_model(), small_model(device="cuda")
    assert gpu.device.startswith("cuda")
    np.testing.assert_array_equal(gpu.params, cpu.params)  # the same initialisation
    x = rng.standard_normal((6, 40, 40, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0, 2], np.int32)
    for m in (cpu, gpu):
        m.zero_grad()
    lc, lg = cpu.train_step(x, y), gpu.train_step(x, y)
    assert lg == pytest.approx(lc, rel=1e-4)
    scale = np.abs(cpu.grads).max()
    np.testing.assert_allclose(gpu.grads, cpu.grads, rtol=1e-3, atol=1e-4 * scale)
    for m in (cpu, gpu):
        m.sgd_step(0.01, first_step=True)
    np.testing.assert_allclose(gpu.params, cpu.params, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gpu.buffers, cpu.buffers, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gpu.embed(x), cpu.embed(x), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match=r"labels\[0\] = 7 is outside"):
        gpu.train_step(x, np.array([7, 1, 2, 1, 0, 2], np.int32))
