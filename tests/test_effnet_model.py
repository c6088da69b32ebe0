"""EfficientNetV2 as glae's backbone, without PyTorch (CI): torchvision's tensor names and
shapes (written out here from torchvision's published table, independently of the C
table), training on a fixed batch lowers the loss, both stages, every head, routing,
checkpoints, the gradient against finite differences, weights in from a torchvision
.pth, and the errors for a wrong backbone. tests/test_effnet_torch.py compares the numbers
with torchvision itself where torch is installed."""
import numpy as np
import pytest

import glae
from glae import _C
from glae.model import CoreModel
from glae.weights import PretrainedError, guess_arch, load_pretrained

from helpers import torch_state_dict, torch_write_zip

S = 32  # the smallest input whose last map is 1x1 (stride 32)

# torchvision's efficientnet_v2_s/m tables: fused, expansion, kernel, stride, in, out, layers
TV = {
    "efficientnet_v2_s": [(1, 1, 3, 1, 24, 24, 2), (1, 4, 3, 2, 24, 48, 4), (1, 4, 3, 2, 48, 64, 4),
                          (0, 4, 3, 2, 64, 128, 6), (0, 6, 3, 1, 128, 160, 9),
                          (0, 6, 3, 2, 160, 256, 15)],
    "efficientnet_v2_m": [(1, 1, 3, 1, 24, 24, 3), (1, 4, 3, 2, 24, 48, 5), (1, 4, 3, 2, 48, 80, 5),
                          (0, 4, 3, 2, 80, 160, 7), (0, 6, 3, 1, 160, 176, 14),
                          (0, 6, 3, 2, 176, 304, 18), (0, 6, 3, 1, 304, 512, 5)],
}


def tv_names(arch, classifier=True):
    """torchvision's efficientnet_v2_*().state_dict() keys and shapes, in its order
    (num_batches_tracked left out)."""
    out = {}

    def cna(pre, cin, cout, k, groups=1):
        out[pre + ".0.weight"] = (cout, cin // groups, k, k)
        for t in ("weight", "bias", "running_mean", "running_var"):
            out[f"{pre}.1.{t}"] = (cout,)

    cna("features.0", 3, 24, 3)
    stages = TV[arch]
    for si, (fused, e, k, stride, cin, cout, layers) in enumerate(stages, 1):
        for j in range(layers):
            ci = cin if j == 0 else cout
            pre, E = f"features.{si}.{j}.block", ci * e
            if fused and e == 1:
                cna(pre + ".0", ci, cout, k)
            elif fused:
                cna(pre + ".0", ci, E, k)
                cna(pre + ".1", E, cout, 1)
            else:
                sq = max(1, ci // 4)
                cna(pre + ".0", ci, E, 1)
                cna(pre + ".1", E, E, k, groups=E)
                out[pre + ".2.fc1.weight"], out[pre + ".2.fc1.bias"] = (sq, E, 1, 1), (sq,)
                out[pre + ".2.fc2.weight"], out[pre + ".2.fc2.bias"] = (E, sq, 1, 1), (E,)
                cna(pre + ".3", E, cout, 1)
    cna(f"features.{len(stages) + 1}", stages[-1][5], 1280, 1)
    if classifier:
        out["classifier.1.weight"], out["classifier.1.bias"] = (1000, 1280), (1000,)
    return out


@pytest.fixture(scope="module")
def small():
    return CoreModel(backbone="efficientnet_v2_s", head="gap", input_size=S, seed=1)


@pytest.fixture(scope="module")
def medium():
    return CoreModel(backbone="efficientnet_v2_m", head="fr", input_size=S, r=8, k=8, s=8)


def test_tables_names_and_shapes_are_torchvision(small, medium):
    for arch, stages in TV.items():
        assert [tuple(r) for r in _C.EFFNET_STAGES[arch]] == stages
    table = [(n, tuple(shape)) for n, shape, _, _, _, group, _ in small.param_table() if group == 0]
    want = tv_names("efficientnet_v2_s", classifier=False)
    assert [n for n, _ in table] == list(want)  # torchvision's order too
    assert dict(table) == want
    n = sum(np.prod(s) for n, s in table if not n.endswith(("running_mean", "running_var")))
    assert n == 20_177_488  # torchvision's 21,458,488 less the 1000-class classifier
    assert [n for n, *_ in medium.param_table() if n.startswith("features")] == \
        list(tv_names("efficientnet_v2_m", classifier=False))


def test_init_is_torchvisions(small):
    """kaiming_normal_(fan_out) for every conv (the depthwise ones: fan_out = C k k), conv
    biases 0, BN weight 1, bias 0, running var 1."""
    for name, shape in [("features.0.0.weight", (24, 3, 3, 3)),
                        ("features.6.0.block.1.0.weight", (960, 1, 3, 3)),
                        ("features.6.3.block.0.0.weight", (1536, 256, 1, 1)),
                        ("features.7.0.weight", (1280, 256, 1, 1))]:
        w = small.get(name)
        assert w.shape == shape
        std = np.sqrt(2.0 / (shape[0] * shape[2] * shape[3]))
        assert abs(w.std() / std - 1) < 0.1 + 3 / np.sqrt(w.size), name
        assert abs(w.mean()) < 4 * std / np.sqrt(w.size), name
    assert (small.get("features.4.0.block.2.fc1.bias") == 0).all()
    assert (small.get("features.4.0.block.1.1.weight") == 1).all()
    assert (small.get("features.4.0.block.1.1.running_var") == 1).all()


def test_loss_falls_on_a_fixed_batch():
    m = CoreModel(backbone="efficientnet_v2_s", head="fr+pa", input_size=S, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, S, S, 3)).astype(np.float32)
    ages = rng.uniform(1, 90, 16).astype(np.float32)
    losses = []
    for i in range(6):
        m.zero_grad()
        losses.append(m.train_step(x, ages)["total"])
        m.sgd_step(0.003, 0.9, 0.0, 5e-4, True, i == 0)
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0], losses
    assert m.drop_step == 6  # one stochastic-depth draw per training forward


def test_gradient_matches_finite_differences():
    """Directional derivatives through the stem, a Fused-MBConv, a depthwise conv, the SE
    and a projection BN (stochastic depth off: the loss is a function of the parameters)."""
    m = CoreModel(backbone="efficientnet_v2_s", head="gap", input_size=S, seed=4,
                  stochastic_depth=0.0)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, S, S, 3)).astype(np.float32)
    ages = rng.uniform(1, 90, 6).astype(np.float32)
    m.zero_grad()
    m.train_step(x, ages)
    grads = m.grads.copy()
    rows = {n: (off, cnt) for n, _, off, cnt, *_ in m.param_table()}
    base = m.params.copy()
    for name in ("features.0.0.weight", "features.2.1.block.0.0.weight",
                 "features.4.2.block.1.0.weight", "features.4.2.block.2.fc1.weight",
                 "features.4.2.block.2.fc2.bias", "features.6.0.block.3.1.weight"):
        off, cnt = rows[name]
        d = rng.standard_normal(cnt)
        d *= 1.0 / np.linalg.norm(d)
        g = float(grads[off:off + cnt] @ d)
        h = 1e-2 * max(np.abs(base[off:off + cnt]).max(), 1e-2)
        f = []
        for sgn in (1, -1):
            p = base.copy()
            p[off:off + cnt] += (sgn * h * d).astype(np.float32)
            m.write_flat("params", p)
            m.zero_grad()
            f.append(m.train_step(x, ages)["total"])
        m.write_flat("params", base)
        fd = (f[0] - f[1]) / (2 * h)
        # float32 losses (~40, rounding ~4e-6) over 2h; the second-order term is O(h^2)
        assert abs(fd - g) <= 0.05 * abs(g) + 2e-5 / h, (name, fd, g)


@pytest.mark.parametrize("head", ["gap", "fr+pa"])  # fr: test_fr_shapes_on_the_1280_channel_map
def test_every_head_both_stages_routing_and_checkpoint(head, tmp_path):
    from glae.data import synthetic_faces

    images, ages = synthetic_faces(48, size=S, seed=1)
    m = glae.Model(backbone="efficientnet_v2_s", head=head, image_size=S, batch_size=16,
                   stage1_epochs=1, stage2_epochs=1, base_lr1=0.002, base_lr2=0.002,
                   linear_scaling=False, proj_width=32, seed=3)
    if head == "fr+pa":  # the whole two-stage run
        trainer = m.fit((images, ages), (images[:16], ages[:16]), out_dir=tmp_path, progress=False,
                        log=lambda *a, **k: None)
        assert trainer.state["stage"] == 2 and m.stage2_trained
        last = glae.load(tmp_path / "last.safetensors")
        assert last.core.drop_step == m.core.drop_step == 3  # 48 / 16 stage-1 steps
    else:  # one step of each stage on the engine
        x = images[:16].astype(np.float32) / 128 - 1
        m.core.train_step(x, ages[:16], stage=1)
        m.core.copy_head_to_balanced()
        m.core.train_step(x, ages[:16], stage=2)
    age, head_used = m.predict(images[:8], return_head=True)
    assert age.shape == (8,) and np.isfinite(age).all() and set(head_used) <= {0, 1}
    p = m.save(tmp_path / "m.safetensors")
    again = glae.load(p)
    assert again.config.backbone == "efficientnet_v2_s"
    np.testing.assert_array_equal(again.predict(images[:8]), m.predict(images[:8]))


def test_fr_shapes_on_the_1280_channel_map(small, medium):
    """docs/model.md: r = 16 turns 1280 x 7 x 7 (224 px) into 5 x 112 x 112; k = s = 16
    gives a 7 x 7 FR map. At 32 px the map is 1 x 1."""
    m = medium
    out = m.forward(np.zeros((2, S, S, 3), np.float32))
    assert out["feature"].shape == (2, 1, 1, 1280) and out["vanilla_map"].shape == (2, 1, 1, 101)
    assert m.get("fr.weight").shape == (101, 1280 // 64, 8, 8)
    assert CoreModel(backbone="efficientnet_v2_s", head="fr", input_size=S).get(
        "fr.weight").shape == (101, 5, 16, 16)


def test_bad_backbone_names_and_mixed_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="resnet18, resnet50, efficientnet_v2_s, efficientnet_v2_m"):
        glae.Model(backbone="efficientnet_v2_l")
    with pytest.raises(ValueError, match="'efficientnet_v2_s', 'efficientnet_v2_m'"):
        _C.Model("efficientnet_b0")
    with pytest.raises(ValueError, match="bf16.*efficientnet_v2_s"):
        glae.Model(backbone="efficientnet_v2_s", gpu_math="bf16", image_size=S)
    r18 = glae.Model(backbone="resnet18", head="gap", image_size=S)
    eff = glae.Model(backbone="efficientnet_v2_s", head="gap", image_size=S)
    with pytest.raises(KeyError, match="tensors are for resnet18, the model is efficientnet_v2_s"):
        eff.load_state_dict(r18.state_dict())
    with pytest.raises(KeyError, match="tensors are for efficientnet_v2_s, the model is resnet18"):
        r18.load_state_dict(eff.state_dict())
    # a glae checkpoint of one backbone as pretrained weights of another
    p = r18.save(tmp_path / "r18.safetensors")
    with pytest.raises(PretrainedError, match="for resnet18, the model is efficientnet_v2_s: the "
                                              "first missing tensor is features.0.0.weight"):
        load_pretrained(eff, p)


def test_torchvision_pth_imports_the_backbone(tmp_path):
    rng = np.random.default_rng(0)
    state = {n: rng.standard_normal(s).astype(np.float32) for n, s in tv_names("efficientnet_v2_s").items()}
    state["features.0.1.num_batches_tracked"] = np.array(5, np.int64)
    torch_write_zip(tmp_path / "efficientnet_v2_s-dd5fe13b.pth", torch_state_dict(state),
                    prefix="efficientnet_v2_s")
    assert guess_arch(state) == "efficientnet_v2_s"
    m = glae.Model(backbone="efficientnet_v2_s", head="fr+pa", image_size=S,
                   pretrained=str(tmp_path / "efficientnet_v2_s-dd5fe13b.pth"))
    rep = m.pretrained_report
    assert len(rep.loaded) == len(state) - 3 and not rep.missing
    assert dict(rep.skipped) == {"classifier.1.weight": "ImageNet classifier",
                                 "classifier.1.bias": "ImageNet classifier"}
    for n in ("features.0.0.weight", "features.5.3.block.1.0.weight",
              "features.5.3.block.2.fc2.weight", "features.7.1.running_var"):
        np.testing.assert_array_equal(m.core.get(n), state[n], err_msg=n)
    # -M weights into -S: both named, and the first tensor that does not fit
    big = {n: np.zeros(s, np.float32) for n, s in tv_names("efficientnet_v2_m").items()}
    torch_write_zip(tmp_path / "m.pth", torch_state_dict(big), prefix="m")
    with pytest.raises(PretrainedError, match=r"for efficientnet_v2_m, the model is "
                       r"efficientnet_v2_s: the first misshapen tensor is features.3.0.block.1.0.weight: "
                       r"\(80, 192, 1, 1\) in the file, \(64, 192, 1, 1\) in the model"):
        load_pretrained(m, tmp_path / "m.pth")
