"""ONNX export of the inference model (needs the optional ``onnx`` package:
``pip install onnx``, or the project's ``export`` extra: ``pip install -e ".[export]"`` in a
source checkout). The graph is built node by node with ``onnx.helper`` from
the model's tensors; layout and conventions are in docs/weights.md.

Input ``image``: float32 (N, 3, S, S), RGB, normalised exactly as glae's loader does for
the model's config (``glae``: (x - 127.5) / 128; ``imagenet``: per-channel mean/std on
x / 255), S = the model's image_size; layout="nhwc" takes (N, S, S, 3) instead (the
layout of ``Model.preprocess``) and transposes inside the graph.
Outputs: ``age`` (N,) float32, ``prob`` (N, K) float32, ``head`` (N,) int64 (0 vanilla,
1 balanced).
"""
import json
import os
import warnings

import numpy as np

from ._lib import _C

__all__ = ["export_onnx", "build_graph"]

HEADS = ("routed", "vanilla", "balanced")
BN_EPS = _C.BN_EPS  # the engine's batch-norm eps (GLAE_BN_EPS, float32 1e-5), folded exactly
EFFNET_BN_EPS = float(np.float32(1e-3))  # EfficientNetV2's (GLAE_EFFNET_BN_EPS, float32)


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install onnx (or the "
                          "project's [export] extra: pip install -e \".[export]\" in a source "
                          "checkout of glae)") from None
    return onnx


class _Builder:
    """Collects nodes and initialisers; every name is unique."""

    def __init__(self, onnx):
        self.onnx, self.h = onnx, onnx.helper
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base, arr):
        arr = np.asarray(arr)
        n = self.name(base)
        self.inits.append(self.onnx.numpy_helper.from_array(arr, n))
        return n

    def op(self, op, inputs, base=None, n_out=1, **attrs):
        outs = [self.name(base or op.lower()) for _ in range(n_out)]
        self.nodes.append(self.h.make_node(op, list(inputs), outs, name=self.name(op), **attrs))
        return outs[0] if n_out == 1 else outs


def _fold_bn(w, b, core, bn, eps=BN_EPS):
    """Conv (OIHW weight w, bias b or None) followed by eval-mode BN -> one conv."""
    g, beta = core.get(bn + ".weight"), core.get(bn + ".bias")
    mean, var = core.get(bn + ".running_mean"), core.get(bn + ".running_var")
    scale = g.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    w2 = (w.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
    b0 = np.zeros_like(mean, dtype=np.float64) if b is None else b.astype(np.float64)
    b2 = ((b0 - mean) * scale + beta).astype(np.float32)
    return w2, b2


def _conv_bn(B, x, core, conv, bn, stride, pad, relu):
    w, b = _fold_bn(core.get(conv + ".weight"), None, core, bn)
    k = w.shape[2]
    y = B.op("Conv", [x, B.const(conv + ".weight", w), B.const(conv + ".bias", b)], conv,
             kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
    return B.op("Relu", [y], conv + ".relu") if relu else y


def _silu(B, y, base):
    return B.op("Mul", [y, B.op("Sigmoid", [y], base + ".sigmoid")], base + ".silu")


def _effnet_unit(B, x, core, pre, stride, act, group=1):
    """torchvision's Conv2dNormActivation pre.0 (conv) + pre.1 (BN, folded) [+ SiLU]."""
    w, b = _fold_bn(core.get(pre + ".0.weight"), None, core, pre + ".1", EFFNET_BN_EPS)
    k = w.shape[2]
    y = B.op("Conv", [x, B.const(pre + ".weight", w), B.const(pre + ".bias", b)], pre,
             kernel_shape=[k, k], strides=[stride, stride], pads=[(k - 1) // 2] * 4, group=group)
    return _silu(B, y, pre) if act else y


def _effnet(B, x, core):
    """torchvision EfficientNetV2 (docs/model.md): stem, Fused-MBConv and MBConv stages
    (squeeze-and-excitation in the latter), the 1x1 head conv; BN folded into the convs,
    stochastic depth is the identity in inference."""
    stages = _C.EFFNET_STAGES[core.config["backbone"]]
    names = {n for n, *_ in core.param_table()}
    y = _effnet_unit(B, x, core, "features.0", 2, True)
    for si, (fused, e, k, stride, cin, cout, layers) in enumerate(stages, 1):
        for j in range(layers):
            s, ci = (stride, cin) if j == 0 else (1, cout)
            pre = f"features.{si}.{j}.block"
            if fused:
                t = _effnet_unit(B, y, core, pre + ".0", s, True)
                if f"{pre}.1.0.weight" in names:
                    t = _effnet_unit(B, t, core, pre + ".1", 1, False)
            else:
                t = _effnet_unit(B, y, core, pre + ".0", 1, True)
                E = core.get(pre + ".0.0.weight").shape[0]
                t = _effnet_unit(B, t, core, pre + ".1", s, True, group=E)
                se = B.op("GlobalAveragePool", [t], pre + ".2.pool")
                for fc in ("fc1", "fc2"):
                    name = f"{pre}.2.{fc}"
                    se = B.op("Conv", [se, B.const(name + ".weight", core.get(name + ".weight")),
                                       B.const(name + ".bias", core.get(name + ".bias"))], name,
                              kernel_shape=[1, 1])
                    se = _silu(B, se, name) if fc == "fc1" else B.op("Sigmoid", [se], name + ".sg")
                t = B.op("Mul", [t, se], pre + ".2.scale")
                t = _effnet_unit(B, t, core, pre + ".3", 1, False)
            y = B.op("Add", [t, y], pre + ".add") if s == 1 and ci == cout else t
    return _effnet_unit(B, y, core, f"features.{len(stages) + 1}", 1, True)


def _backbone(B, x, core):
    """torchvision ResNet (docs/model.md): stem, 4 stages, BN folded into the convs."""
    if core.config["backbone"].startswith("efficientnet"):
        return _effnet(B, x, core)
    stages = _C.RESNET_STAGES[core.config["backbone"]]  # (blocks, width, out) per stage
    bottleneck = stages[0][2] != stages[0][1]  # a Bottleneck widens its output 4x
    blocks = [nb for nb, _, _ in stages]
    names = {n for n, *_ in core.param_table()}
    y = _conv_bn(B, x, core, "conv1", "bn1", 2, 3, True)
    y = B.op("MaxPool", [y], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    for s, nb in enumerate(blocks, 1):
        for i in range(nb):
            pre = f"layer{s}.{i}"
            stride = 2 if (i == 0 and s > 1) else 1
            if bottleneck:  # v1.5: the stride sits on the 3x3
                t = _conv_bn(B, y, core, pre + ".conv1", pre + ".bn1", 1, 0, True)
                t = _conv_bn(B, t, core, pre + ".conv2", pre + ".bn2", stride, 1, True)
                t = _conv_bn(B, t, core, pre + ".conv3", pre + ".bn3", 1, 0, False)
            else:
                t = _conv_bn(B, y, core, pre + ".conv1", pre + ".bn1", stride, 1, True)
                t = _conv_bn(B, t, core, pre + ".conv2", pre + ".bn2", 1, 1, False)
            if pre + ".downsample.0.weight" in names:
                idn = _conv_bn(B, y, core, pre + ".downsample.0", pre + ".downsample.1",
                               stride, 0, False)
            else:
                idn = y
            y = B.op("Relu", [B.op("Add", [t, idn], pre + ".add")], pre + ".relu")
    return y


def _gemm(B, x, core, name):
    return B.op("Gemm", [x, B.const(name + ".weight", core.get(name + ".weight")),
                         B.const(name + ".bias", core.get(name + ".bias"))], name, transB=1)


def _head(B, feat, core, prefix):
    """One head (prefix "" vanilla, "balanced." balanced) on the NCHW feature map ->
    (N, K) probabilities (docs/model.md, "Heads")."""
    cfg = core.config
    kind = cfg["head"]
    if kind == "gap":
        v = B.op("Flatten", [B.op("GlobalAveragePool", [feat], prefix + "gap")], axis=1)
        logits = _gemm(B, v, core, prefix + "fc")
    else:
        # Feature Rearrangement: PixelShuffle(r) == DepthToSpace CRD, then the FR conv
        sh = B.op("DepthToSpace", [feat], prefix + "shuffle", blocksize=cfg["r"], mode="CRD")
        k, s = cfg["k"], cfg["s"]
        fmap = B.op("Conv", [sh, B.const(prefix + "fr.weight", core.get(prefix + "fr.weight")),
                             B.const(prefix + "fr.bias", core.get(prefix + "fr.bias"))],
                    prefix + "fr", kernel_shape=[k, k], strides=[s, s], pads=[0] * 4)
        if kind == "fr":  # the image's logits: the H'W'-average of the FR map
            logits = B.op("Flatten", [B.op("GlobalAveragePool", [fmap])], axis=1)
        else:  # fr+pa holistic branch: NCHW flatten, projection, classifier
            h = _gemm(B, B.op("Flatten", [fmap], prefix + "flatten", axis=1), core, prefix + "proj.0")
            for j in range(cfg["proj_depth"]):
                bn, lin = f"{prefix}proj.{3 * j + 1}", f"{prefix}proj.{3 * j + 3}"
                h = B.op("BatchNormalization",
                         [h] + [B.const(f"{bn}.{t}", core.get(f"{bn}.{t}"))
                                for t in ("weight", "bias", "running_mean", "running_var")],
                         bn, epsilon=BN_EPS)
                h = _gemm(B, B.op("Relu", [h]), core, lin)
            logits = _gemm(B, h, core, prefix + "cls")
    return B.op("Softmax", [logits], prefix + "prob", axis=1)


def _kl(B, p, q, base):
    """KL(p || q) per row; terms with p = 0 count 0 and probabilities below float32's
    smallest normal count as it inside the logs (as glae_kl_rows: ONNX Runtime flushes
    subnormal softmax outputs to 0, which must not change the routing)."""
    tiny = B.const("flt_min", np.float32(np.finfo(np.float32).tiny))
    term = B.op("Mul", [p, B.op("Sub", [B.op("Log", [B.op("Max", [p, tiny])]),
                                        B.op("Log", [B.op("Max", [q, tiny])])])])
    zero = B.const("zero", np.float32(0))
    term = B.op("Where", [B.op("Greater", [p, zero]), term, zero])
    return B.op("ReduceSum", [term, B.const("axes", np.array([1], np.int64))], base, keepdims=0)


def build_graph(core, head="routed", batch=None, flip=True, layout="nchw", opset=17):
    """The onnx.ModelProto of a CoreModel's inference (see export_onnx)."""
    onnx = _onnx()
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    if layout not in ("nchw", "nhwc"):
        raise ValueError(f"layout must be 'nchw' or 'nhwc'; got {layout!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int or None (dynamic); got {batch!r}")
    cfg = core.config
    S, K = cfg["input_size"], cfg["num_classes"]
    B = _Builder(onnx)
    n_dim = batch if batch is not None else "N"
    in_shape = [n_dim, 3, S, S] if layout == "nchw" else [n_dim, S, S, 3]
    x = "image"
    if layout == "nhwc":
        x = B.op("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])
    flip = flip or head == "routed"  # routing always compares with the flip
    if flip:  # the images, then their mirror images, as one batch of 2N (like predict)
        xf = B.op("Slice", [x, B.const("start", np.array([-1], np.int64)),
                            B.const("end", np.array([np.iinfo(np.int64).min], np.int64)),
                            B.const("axis", np.array([3], np.int64)),
                            B.const("step", np.array([-1], np.int64))], "hflip")
        x = B.op("Concat", [x, xf], "with_flip", axis=0)
    feat = _backbone(B, x, core)
    ages = B.const("ages", np.arange(K, dtype=np.float32).reshape(K, 1))

    def both(p):
        return B.op("Split", [p], "split", n_out=2, axis=0) if flip else (p, None)

    def avg(p, pf):
        return B.op("Mul", [B.op("Add", [p, pf]), B.const("half", np.float32(0.5))])

    if head == "routed":
        pv, pvf = both(_head(B, feat, core, ""))
        pb, pbf = both(_head(B, feat, core, "balanced."))
        u1, u2 = _kl(B, pv, pvf, "upsilon1"), _kl(B, pb, pbf, "upsilon2")  # GLAE eq. 11
        van = B.op("Less", [u1, u2], "vanilla_wins")  # a tie goes to the balanced head
        a, b = (avg(pv, pvf), avg(pb, pbf)) if flip else (pv, pb)
        van2 = B.op("Unsqueeze", [van, B.const("axes", np.array([1], np.int64))])
        prob = B.op("Where", [van2, a, b], "routed_prob")
        B.nodes.append(B.h.make_node("Cast", [B.op("Not", [van])], ["head"], to=onnx.TensorProto.INT64))
    else:
        p, pf = both(_head(B, feat, core, "" if head == "vanilla" else "balanced."))
        prob = avg(p, pf) if flip else p
        B.nodes.append(B.h.make_node(
            "ConstantOfShape", [B.op("Slice", [B.op("Shape", [prob]),
                                               B.const("s0", np.array([0], np.int64)),
                                               B.const("s1", np.array([1], np.int64))])],
            ["head"], value=onnx.numpy_helper.from_array(
                np.array([head == "balanced"], np.int64))))
    B.nodes.append(B.h.make_node("Identity", [prob], ["prob"]))
    B.nodes.append(B.h.make_node("Reshape", [B.op("MatMul", [prob, ages], "expected_age"),
                                             B.const("flat", np.array([-1], np.int64))], ["age"]))
    T = onnx.TensorProto
    graph = B.h.make_graph(
        B.nodes, f"glae_{cfg['backbone']}_{cfg['head'].replace('+', '_')}_{head}",
        [B.h.make_tensor_value_info("image", T.FLOAT, in_shape)],
        [B.h.make_tensor_value_info("age", T.FLOAT, [n_dim]),
         B.h.make_tensor_value_info("prob", T.FLOAT, [n_dim, K]),
         B.h.make_tensor_value_info("head", T.INT64, [n_dim])],
        B.inits)
    model = B.h.make_model(graph, opset_imports=[B.h.make_opsetid("", opset)],
                           producer_name="glae")
    model.ir_version = min(model.ir_version, 8)  # readable by older runtimes too
    return model


def export_onnx(checkpoint_or_model, path, head="routed", batch=None, flip=True,
                layout="nchw", opset=17):
    """Write an ONNX graph of the inference model to ``path``.

    checkpoint_or_model: a glae checkpoint path, a glae.Model or a CoreModel.
    head: "routed" (Adaptive Routing between the vanilla and balanced heads on the image
    and its flip, as Model.predict with route="smaller"), "vanilla" or "balanced".
    batch: None (dynamic N) or a fixed batch size. flip: average each distribution with
    its horizontal flip's (GLAE V-A; always computed for routing). layout: "nchw" or
    "nhwc" input. Returns path."""
    if isinstance(checkpoint_or_model, (str, bytes, os.PathLike)) \
            and not os.path.isfile(checkpoint_or_model):  # before the onnx package is asked for
        raise FileNotFoundError(f"checkpoint not found: {os.fsdecode(checkpoint_or_model)}")
    onnx = _onnx()
    from .model import CoreModel, Model, load

    cfg_json = None
    if isinstance(checkpoint_or_model, (str, bytes, os.PathLike)):
        checkpoint_or_model = load(checkpoint_or_model, device="cpu")  # weights only
    if isinstance(checkpoint_or_model, Model):
        if head == "routed" and not checkpoint_or_model.stage2_trained:
            warnings.warn("exporting head='routed' from a model whose balanced head was not "
                          "trained (stage 2); head='vanilla' may be what you want", stacklevel=2)
        route = checkpoint_or_model.config.route
        if head == "routed" and route not in ("smaller",):
            warnings.warn(f"the model's route is {route!r}, but the ONNX graph's 'routed' head "
                          "is Adaptive Routing (eq. 11, route='smaller'); the exported answers "
                          "differ from Model.predict's (export head='vanilla' or 'balanced', or "
                          "route on the two heads' outputs yourself)", stacklevel=2)
        cfg_json = checkpoint_or_model.config.to_json()
        core = checkpoint_or_model.core
    elif isinstance(checkpoint_or_model, CoreModel) or hasattr(checkpoint_or_model, "param_table"):
        core = checkpoint_or_model
    else:
        raise TypeError("checkpoint_or_model must be a checkpoint path, a glae.Model or a "
                        f"CoreModel; got {type(checkpoint_or_model).__name__}")
    model = build_graph(core, head=head, batch=batch, flip=flip, layout=layout, opset=opset)
    meta = {"glae.head": head, "glae.layout": layout, "glae.flip": str(bool(flip or head == "routed")),
            "glae.model": json.dumps(core.config, sort_keys=True)}
    if cfg_json:
        meta["glae.config"] = cfg_json
        meta["glae.normalization"] = json.loads(cfg_json)["normalization"]
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    from ._atomic import write_atomically

    return write_atomically(path, lambda tmp: onnx.save(model, tmp))
