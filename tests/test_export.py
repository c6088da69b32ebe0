"""glae.export: the ONNX graph, run by ONNX Runtime, gives glae's predict outputs (age,
prob, head) for the routed, vanilla and balanced heads (skipped without onnx /
onnxruntime)."""
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from glae.export import build_graph, export_onnx  # noqa: E402
from glae.model import CoreModel, Model  # noqa: E402

S = 64


def _session(model_proto):
    return ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _stage2_like(core, seed):
    """Random BN statistics everywhere; the balanced head is a copy of the vanilla one,
    then perturbed (like a short stage 2), and both classifiers are sharpened so that the
    distributions are far from uniform and routing picks both heads."""
    rng = np.random.default_rng(seed)
    if core.config["backbone"].startswith("efficientnet"):
        # random statistics leave its eval-mode map nearly constant (image and flip would
        # tie): the statistics of training-mode forwards instead (momentum 0.1)
        x = rng.standard_normal((8, S, S, 3)).astype(np.float32)
        for _ in range(40):
            core.forward(x, training=True)
    for n, shape, *_ in core.param_table():
        if core.config["backbone"].startswith("efficientnet"):
            break
        if n.endswith("running_mean"):
            core.set(n, rng.normal(0, 0.1, shape).astype(np.float32))
        elif n.endswith("running_var"):
            core.set(n, rng.uniform(0.5, 2.0, shape).astype(np.float32))
    core.copy_head_to_balanced()
    for n, shape, _, _, _, group, _ in core.param_table():
        if group == 2 and not n.endswith(("running_mean", "running_var")):
            w = core.get(n)
            core.set(n, (w + rng.normal(0, 0.5, shape) * np.abs(w).mean()).astype(np.float32))
        if n.endswith(("cls.weight", "fc.weight", "fr.weight")):
            core.set(n, core.get(n) * 8)


MODELS = {
    "fr+pa": dict(head="fr+pa", proj_depth=1, proj_width=48),
    "gap": dict(head="gap"),
    "fr": dict(head="fr", r=8, k=8, s=4),  # overlapping FR windows
    "fr+pa/depth0": dict(head="fr+pa", proj_depth=0),  # the shipped default head
    "fr+pa/resnet50": dict(backbone="resnet50", head="fr+pa", proj_depth=0),
    "fr+pa/efficientnet_v2_s": dict(backbone="efficientnet_v2_s", head="fr+pa", proj_depth=0),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    kw = {"backbone": "resnet18", **MODELS[request.param]}
    core = CoreModel(input_size=S, seed=7, **kw)
    # a perturbation at which routing picks both heads on these images
    _stage2_like(core, 14 if "efficientnet" in request.param else 11)
    x = np.random.default_rng(1).standard_normal((6, S, S, 3)).astype(np.float32)
    return request.param, core, x


def _check(got, want, what):
    age, prob, head = got
    a, p, h = want
    assert age.shape == a.shape and prob.shape == p.shape and head.shape == h.shape, what
    assert head.dtype == np.int64, what
    np.testing.assert_allclose(prob, p, rtol=0, atol=1e-4, err_msg=what)
    # ages are ~50: float32 rounding of 20 conv layers (relative ~3e-6) shows at 1e-4
    np.testing.assert_allclose(age, a, rtol=1e-5, atol=1e-4, err_msg=what)
    np.testing.assert_array_equal(head, h, err_msg=what)


def test_routed_matches_predict(model):
    name, core, x = model
    want = core.predict(x, route="smaller", flip=True)
    assert 0 < want[2].sum() < len(x), "routing should pick both heads in this test"
    assert want[1].max() > 0.05  # not a near-uniform distribution
    got = _session(build_graph(core)).run(None, {"image": x.transpose(0, 3, 1, 2).copy()})
    _check(got, want, name)


@pytest.mark.parametrize("head", ["vanilla", "balanced"])
def test_single_head_and_options(model, head):
    name, core, x = model
    s = _session(build_graph(core, head=head, batch=len(x), layout="nhwc"))
    _check(s.run(None, {"image": x}), core.predict(x, route=head, flip=True), f"{name} {head}")
    if name == "gap":
        s = _session(build_graph(core, head=head, flip=False))
        _check(s.run(None, {"image": x[:3].transpose(0, 3, 1, 2).copy()}),
               core.predict(x[:3], route=head, flip=False), f"{name} {head} no flip")


def test_graph_uses_the_named_ops(model):
    name, core, _ = model
    ops = {n.op_type for n in build_graph(core).graph.node}
    assert {"Conv", "Add", "Softmax", "Less", "Where", "Slice"} <= ops
    if "efficientnet" in name:  # SiLU as x * sigmoid(x), SE's pool and channel scale
        assert {"Sigmoid", "Mul", "GlobalAveragePool"} <= ops
        assert any(n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
                   for n in build_graph(core).graph.node)  # the depthwise convolutions
    else:
        assert {"Relu", "MaxPool"} <= ops
    if name.startswith("fr"):
        assert "DepthToSpace" in ops
        for n in build_graph(core).graph.node:
            if n.op_type == "DepthToSpace":  # CRD is PyTorch PixelShuffle's order
                assert onnx.helper.get_attribute_value(
                    next(a for a in n.attribute if a.name == "mode")) == b"CRD"
    if name == "fr+pa":
        assert {"Flatten", "Gemm", "BatchNormalization"} <= ops


def test_export_from_checkpoint_and_cli(tmp_path):
    from glae.cli import main

    m = Model(backbone="resnet18", head="gap", image_size=32, seed=2)
    m.stage2_trained = True
    ck = m.save(tmp_path / "m.safetensors")
    out = tmp_path / "m.onnx"
    assert main(["export", str(ck), str(out), "--head", "vanilla"]) == 0
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["glae.head"] == "vanilla" and meta["glae.normalization"] == "glae"
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    got = _session(proto).run(None, {"image": x.transpose(0, 3, 1, 2).copy()})
    _check(got, m.core.predict(x, route="vanilla", flip=True), "cli")
    assert export_onnx(m, tmp_path / "r.onnx") == str(tmp_path / "r.onnx")


def test_bad_arguments(tmp_path):
    core = CoreModel(backbone="resnet18", head="gap", input_size=32)
    with pytest.raises(ValueError, match="head"):
        build_graph(core, head="smaller")
    with pytest.raises(ValueError, match="layout"):
        build_graph(core, layout="chw")
    with pytest.raises(ValueError, match="batch"):
        build_graph(core, batch=0)
    with pytest.raises(TypeError, match="checkpoint_or_model"):
        export_onnx(3, tmp_path / "x.onnx")
    m = Model(backbone="resnet18", head="gap", image_size=32)
    with pytest.warns(UserWarning, match="stage 2"):
        export_onnx(m, tmp_path / "x.onnx")


def test_errors_name_the_users_paths(tmp_path, monkeypatch):
    """A missing checkpoint is named before the onnx package is needed; a file that cannot
    be written is named as given (not its temporary name) and leaves nothing behind; the
    missing-package advice suits a source install too."""
    m = Model(backbone="resnet18", head="gap", image_size=32)
    m.stage2_trained = True
    target = tmp_path / "missing" / "x.onnx"
    with pytest.raises(OSError) as e:
        export_onnx(m, target)
    assert str(e.value).startswith(f"cannot write {target}: ") and ".tmp" not in str(e.value)
    assert not (tmp_path / "missing").exists()
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.safetensors"):
        export_onnx(tmp_path / "nope.safetensors", tmp_path / "x.onnx")
    with pytest.raises(ImportError, match=r"pip install onnx \(or the project's \[export\] extra"):
        export_onnx(m, tmp_path / "x.onnx")
