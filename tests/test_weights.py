"""glae.weights: ImageNet backbones from torchvision's .pth (zip and legacy torch.save
layouts, written here with the pickle module the way torch writes them) and from
.safetensors files; glae checkpoints readable by the `safetensors` package."""
import importlib.util
import os

import numpy as np
import pytest

import glae
from glae import checkpoint
from glae.model import CoreModel, Model
from glae.weights import PretrainedError, guess_arch, load_pretrained

from helpers import torch_state_dict, torch_write_legacy, torch_write_zip

HAS_SAFETENSORS = importlib.util.find_spec("safetensors") is not None


# ---- torch.save files (tests/helpers.py's writer): one storage per tensor, like torchvision's

def write_pth(path, state):
    """The zip layout torch.save has written since 1.6 (torchvision's .pth)."""
    torch_write_zip(path, torch_state_dict(state), prefix="resnet18")


def write_legacy(path, state):
    torch_write_legacy(path, torch_state_dict(state))


# ---- a torchvision ResNet-18 state dict of random values --------------------------------

def _names18():
    """torchvision resnet18().state_dict() keys and shapes, written out independently of
    glae (stem, 4 stages of 2 BasicBlocks, downsample where the width changes, fc)."""
    out = [("conv1.weight", (64, 3, 7, 7))]

    def bn(pre, c):
        return [(f"{pre}.weight", (c,)), (f"{pre}.bias", (c,)), (f"{pre}.running_mean", (c,)),
                (f"{pre}.running_var", (c,)), (f"{pre}.num_batches_tracked", ())]

    out += bn("bn1", 64)
    cin = 64
    for s, c in enumerate((64, 128, 256, 512), 1):
        for b in range(2):
            pre = f"layer{s}.{b}"
            out.append((f"{pre}.conv1.weight", (c, cin, 3, 3)))
            out += bn(f"{pre}.bn1", c)
            out.append((f"{pre}.conv2.weight", (c, c, 3, 3)))
            out += bn(f"{pre}.bn2", c)
            if b == 0 and cin != c:
                out.append((f"{pre}.downsample.0.weight", (c, cin, 1, 1)))
                out += bn(f"{pre}.downsample.1", c)
            cin = c
    return out + [("fc.weight", (1000, 512)), ("fc.bias", (1000,))]


def resnet18_state(seed=0):
    rng = np.random.default_rng(seed)
    state = {}
    for k, shape in _names18():
        if k.endswith("num_batches_tracked"):
            state[k] = np.array(1234, np.int64)
        elif k.endswith("running_var"):
            state[k] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            state[k] = rng.standard_normal(shape).astype(np.float32)
    return state


def resnet50_names():
    out = ["conv1.weight", "bn1.weight"]
    for s, n in enumerate((3, 4, 6, 3), 1):
        for b in range(n):
            out += [f"layer{s}.{b}.conv{j}.weight" for j in (1, 2, 3)]
    return out + ["fc.weight"]


@pytest.fixture(scope="module")
def state():
    return resnet18_state()


@pytest.fixture(scope="module")
def files(tmp_path_factory, state):
    d = tmp_path_factory.mktemp("w")
    write_pth(d / "resnet18.pth", state)
    write_legacy(d / "resnet18-legacy.pth", state)
    checkpoint.save(d / "glae-written.safetensors", state)
    out = {"pth": d / "resnet18.pth", "legacy": d / "resnet18-legacy.pth",
           "glae-st": d / "glae-written.safetensors"}
    if HAS_SAFETENSORS:
        from safetensors.numpy import save_file

        save_file(state, str(d / "st-written.safetensors"), metadata={"format": "pt"})
        out["st"] = d / "st-written.safetensors"
    return out


def _model(head="gap"):
    return CoreModel(backbone="resnet18", head=head, input_size=32, seed=1)


def _check_loaded(core, state, rep):
    backbone = [n for n, *_, g, _ in core.param_table() if g == 0]
    assert sorted(rep.loaded) == sorted(backbone)
    assert rep.missing == []
    for n in backbone:  # get() speaks OIHW, stored OHWI: equality checks the transpose
        np.testing.assert_array_equal(core.get(n), state[n], err_msg=n)
    skipped = dict(rep.skipped)
    assert skipped == {"fc.weight": "ImageNet classifier", "fc.bias": "ImageNet classifier"}


@pytest.mark.parametrize("fmt", ["pth", "legacy", "glae-st", "st"])
def test_every_backbone_tensor_loads(files, state, fmt):
    if fmt not in files:
        pytest.skip("safetensors package not installed")
    core = _model()
    head_before = core.get("fc.weight").copy()
    rep = load_pretrained(core, files[fmt])
    _check_loaded(core, state, rep)
    assert rep.arch == "resnet18"
    np.testing.assert_array_equal(core.get("fc.weight"), head_before)  # 101-class fc untouched
    assert "49 backbone tensors" not in str(rep) and "skipped" in str(rep)


def test_stored_layout_is_ohwi(files, state):
    core = _model()
    load_pretrained(core, files["pth"])
    name, shape, off, numel, *_ = next(t for t in core.param_table() if t[0] == "conv1.weight")
    stored = np.asarray(core.params[off:off + numel]).reshape(64, 7, 7, 3)
    np.testing.assert_array_equal(stored, state["conv1.weight"].transpose(0, 2, 3, 1))


def test_public_model_and_config(files, state, tmp_path):
    m = Model(backbone="resnet18", head="gap", image_size=32, pretrained=str(files["pth"]))
    assert m.config.pretrained == str(files["pth"])
    _check_loaded(m.core, state, m.pretrained_report)
    # a saved model restores from its own tensors; the pretrained file is not read again
    m.core.set("conv1.weight", np.zeros((64, 3, 7, 7), np.float32))
    gone = tmp_path / "moved.pth"
    m.config = m.config.replace(pretrained=str(gone))
    m2 = glae.model.load(m.save(tmp_path / "m.safetensors"))
    assert m2.config.pretrained == str(gone) and m2.pretrained_report is None
    np.testing.assert_array_equal(m2.core.get("conv1.weight"), 0)
    with pytest.raises(ValueError, match="pretrained"):
        glae.config.Config(pretrained=3)
    with pytest.raises(FileNotFoundError):
        Model(backbone="resnet18", head="gap", image_size=32, pretrained=str(gone))


def test_wrong_architecture(tmp_path):
    st = {n: np.zeros(1, np.float32) for n in resnet50_names()}
    checkpoint.save(tmp_path / "r50.safetensors", st)
    assert guess_arch(st) == "resnet50"
    core = _model()
    before = core.get("conv1.weight")
    with pytest.raises(PretrainedError, match="resnet50.*model is resnet18"):
        load_pretrained(core, tmp_path / "r50.safetensors")
    np.testing.assert_array_equal(core.get("conv1.weight"), before)
    checkpoint.save(tmp_path / "none.safetensors", {"encoder.w": np.zeros(2, np.float32)})
    with pytest.raises(PretrainedError, match="no ResNet or EfficientNet backbone"):
        load_pretrained(core, tmp_path / "none.safetensors")


def test_missing_keys(tmp_path, state):
    st = {k: v for k, v in state.items() if k != "layer3.1.bn1.running_mean"}
    write_pth(tmp_path / "m.pth", st)
    core = _model()
    before = core.get("conv1.weight")
    with pytest.raises(PretrainedError, match="missing.*layer3.1.bn1.running_mean"):
        load_pretrained(core, tmp_path / "m.pth")
    np.testing.assert_array_equal(core.get("conv1.weight"), before)  # nothing written
    rep = load_pretrained(core, tmp_path / "m.pth", strict_backbone=False)
    assert rep.missing == ["layer3.1.bn1.running_mean"]
    np.testing.assert_array_equal(core.get("conv1.weight"), state["conv1.weight"])
    np.testing.assert_array_equal(core.get("layer3.1.bn1.running_mean"), 0)


def test_shape_mismatch_and_prefix(tmp_path, state):
    st = dict(state)
    st["layer2.0.conv2.weight"] = np.zeros((128, 128, 1, 1), np.float32)
    write_pth(tmp_path / "s.pth", st)
    for strict in (True, False):
        with pytest.raises(PretrainedError, match=r"layer2.0.conv2.weight: shape \(128, 128, 1, 1\)"):
            load_pretrained(_model(), tmp_path / "s.pth", strict_backbone=strict)
    # DataParallel's "module." prefix is stripped
    checkpoint.save(tmp_path / "dp.safetensors", {"module." + k: v for k, v in state.items()})
    core = _model()
    _check_loaded(core, state, load_pretrained(core, tmp_path / "dp.safetensors"))


def test_bad_files(tmp_path):
    core = _model()
    cases = {"empty.pth": b"", "text.pth": b"hello, this is not a weight file\n",
             "zip.pth": b"PK\x03\x04broken", "short.safetensors": b"\x05\x00"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError):
            load_pretrained(core, tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load_pretrained(core, tmp_path / "absent.pth")


# ---- weights out: the safetensors package reads glae's checkpoints ----------------------

def test_checkpoint_weights_out(tmp_path):
    """A glae checkpoint is a safetensors file the `safetensors` package reads (when it
    is installed), and its backbone loads back as pretrained weights."""
    m = Model(backbone="resnet18", head="fr+pa", image_size=64, proj_depth=1, seed=2)
    p = m.save(tmp_path / "m.safetensors")
    core = _model()
    rep = load_pretrained(core, p)
    assert len(rep.loaded) == 100 and rep.missing == []
    np.testing.assert_array_equal(core.get("layer4.1.bn2.weight"), m.core.get("layer4.1.bn2.weight"))
    skipped = dict(rep.skipped)
    assert skipped["fr.weight"] == "not a backbone tensor" and "optimizer.momentum" in skipped
    if not HAS_SAFETENSORS:
        pytest.skip("safetensors package not installed: cross-check skipped")
    from safetensors import safe_open
    from safetensors.numpy import load_file

    got = load_file(str(p))
    sd = m.state_dict()
    assert set(got) == set(sd) | {"optimizer.momentum"}
    for k, v in sd.items():
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    with safe_open(str(p), framework="np") as f:
        meta = f.metadata()
    assert meta["format"] == '"glae-checkpoint-1"' and "__glae__" in meta
