"""ImageNet-pretrained backbones from torchvision's files, without PyTorch.

``load_pretrained(model, path)`` reads a torchvision ``.pth`` (zip or legacy ``torch.save``
layout, through :mod:`glae.torchfile`) or a ``.safetensors`` file (through
:func:`glae.checkpoint.load`) and copies every backbone tensor into the model under its
torchvision name (glae's backbone uses torchvision's names, docs/model.md). Conv weights
arrive OIHW and are stored OHWI by ``CoreModel.set``. The 1000-class ``fc`` and anything
else outside the backbone are skipped and reported; ``num_batches_tracked`` is ignored.
See docs/weights.md.
"""
import os
import re
from dataclasses import dataclass, field

import numpy as np

from ._lib import _C

__all__ = ["PretrainedError", "LoadReport", "load_pretrained", "read_state_dict", "guess_arch"]


class PretrainedError(ValueError):
    """The weight file does not fit the model: another architecture, missing tensors or
    tensors of the wrong shape."""


@dataclass
class LoadReport:
    """What ``load_pretrained`` did. skipped: (name, reason) pairs."""

    path: str
    arch: str
    loaded: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    missing: list = field(default_factory=list)

    def __str__(self):
        s = (f"{os.path.basename(self.path)} ({self.arch}): {len(self.loaded)} backbone tensors "
             f"loaded, {len(self.skipped)} skipped, {len(self.missing)} missing")
        if self.skipped:
            s += "\n  skipped: " + ", ".join(f"{n} ({why})" for n, why in self.skipped[:8])
            if len(self.skipped) > 8:
                s += f", ... {len(self.skipped) - 8} more"
        if self.missing:
            s += "\n  missing: " + ", ".join(self.missing[:8])
        return s


def _arch_key(stages):
    """(block kind, blocks per stage) of a _C.RESNET_STAGES entry."""
    kind = "bottleneck" if stages[0][2] != stages[0][1] else "basic"
    return kind, tuple(nb for nb, _, _ in stages)


# (block kind, blocks per stage) -> torchvision's name: the backbones glae builds (from the
# C table), and torchvision's others, so that a wrong file is named in the error
_ARCHS = {
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
    **{_arch_key(stages): name for name, stages in _C.RESNET_STAGES.items()},
}
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.")
# EfficientNet (torchvision): features.<stage>.<block>.block.*; blocks per stage -> name,
# the ones glae builds from the C table and torchvision's others
_EFF_BLOCK = re.compile(r"^features\.(\d+)\.(\d+)\.block\.")
_EFF_ARCHS = {
    (4, 7, 7, 10, 19, 25, 7): "efficientnet_v2_l",
    (1, 2, 2, 3, 3, 4, 1): "efficientnet_b0",
    (2, 3, 3, 4, 4, 5, 2): "efficientnet_b1 or b2",
    **{tuple(st[-1] for st in stages): name for name, stages in _C.EFFNET_STAGES.items()},
}
_PREFIXES = ("module.", "model.", "backbone.")  # DataParallel / wrapper prefixes


def read_state_dict(path):
    """{name: float32 array} from a ``.pth``/``.pt`` (torch.save) or ``.safetensors`` file,
    chosen by the file's first bytes (not its name). Integer tensors keep their dtype."""
    from . import checkpoint, torchfile

    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: u64 header length, then the JSON header's "{" (its length's low byte
    # can be 0x80, a pickle's first byte, so this test comes first)
    if len(head) == 9 and head[8:9] == b"{":
        tensors, _ = checkpoint.load(path)  # CheckpointError (a ValueError) when damaged
    elif head[:2] == b"PK" or head[:1] == b"\x80" or path.endswith((".pth", ".pt", ".bin")):
        return torchfile.load_state_dict(path)
    else:
        tensors, _ = checkpoint.load(path)
    return {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in tensors.items()}


def _strip_prefix(state):
    for p in _PREFIXES:
        if state and all(k.startswith(p) for k in state):
            return {k[len(p):]: v for k, v in state.items()}
    return state


def _guess_effnet(state):
    """torchvision's EfficientNet name from the blocks per stage, or None."""
    counts = {}
    for k in state:
        m = _EFF_BLOCK.match(k)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            counts[s] = max(counts.get(s, 0), b + 1)
    if not counts:
        return None
    stages = tuple(counts.get(s, 0) for s in range(1, max(counts) + 1))
    return _EFF_ARCHS.get(stages, f"EfficientNet {stages}")


def guess_arch(state):
    """torchvision's architecture name for a ResNet or EfficientNet state dict
    (``resnet18``, ``resnet50``, ``efficientnet_v2_s``, ...), or a description like
    ``bottleneck ResNet (1, 2, 3, 4)`` when the block counts are not a torchvision model,
    or None when there are no ResNet or EfficientNet stage keys at all.
    Wide ResNets (resnet50 layout, twice the inner width) are named ``wide_resnet50_2``."""
    eff = _guess_effnet(state)
    if eff is not None:
        return eff
    counts, kind = [0, 0, 0, 0], "basic"
    for k in state:
        m = _BLOCK.match(k)
        if m:
            s, b = int(m.group(1)) - 1, int(m.group(2))
            counts[s] = max(counts[s], b + 1)
            if k[m.end():].startswith("conv3."):
                kind = "bottleneck"
    if not any(counts):
        return None
    name = _ARCHS.get((kind, tuple(counts)), f"{kind} ResNet {tuple(counts)}")
    w = state.get("layer1.0.conv1.weight")
    if name == "resnet50" and w is not None and w.ndim == 4 and w.shape[0] == 128:
        name = "wide_resnet50_2"
    return name


def _first_misfit(state, backbone):
    """The first backbone tensor (torchvision's order) that the file lacks or holds in
    another shape, as a phrase; None when every one fits."""
    for n, shape in backbone.items():
        if n not in state:
            return f"the first missing tensor is {n}"
        if tuple(state[n].shape) != shape:
            return (f"the first misshapen tensor is {n}: {tuple(state[n].shape)} in the file, "
                    f"{shape} in the model")
    return None


def load_pretrained(model, path, strict_backbone=True):
    """Copy an ImageNet-pretrained backbone (ResNet-18/50, EfficientNetV2-S/M) into
    ``model`` (a glae.Model or a CoreModel). path: torchvision's ``.pth`` or a
    ``.safetensors`` file (also a glae checkpoint, whose backbone is then taken).

    Every backbone tensor of the model (conv weights, BN weight/bias/running statistics)
    is looked up by its torchvision name; keys outside the backbone (torchvision's ``fc``,
    glae heads) are skipped and reported, ``num_batches_tracked`` is ignored.
    strict_backbone: a backbone tensor absent from the file raises PretrainedError
    (False: it keeps its initial value and is listed in ``missing``). A tensor of the
    wrong shape, or a file for another architecture (resnet50 weights into a resnet18),
    always raises PretrainedError. Nothing is written unless the whole check passes.
    Returns a LoadReport(loaded, skipped, missing)."""
    core = getattr(model, "core", model)
    path = os.fspath(path)
    name = os.path.basename(path)
    state = _strip_prefix(read_state_dict(path))
    want = core.config["backbone"]
    arch = guess_arch(state)
    table = core.param_table()
    backbone = {n: tuple(shape) for n, shape, _, _, _, group, _ in table if group == 0}
    if arch is None:
        raise PretrainedError(f"{name}: no ResNet or EfficientNet backbone tensors (layer1.0.*, "
                              f"features.1.0.block.* ...) in the file ({_first_misfit(state, backbone)}); "
                              f"keys start {sorted(state)[:4]}")
    if arch != want:
        raise PretrainedError(f"{name}: the weights are for {arch}, the model is {want}: "
                              f"{_first_misfit(state, backbone)} (build the model with "
                              f"backbone={arch!r} or use {want} weights)")
    rep = LoadReport(path=path, arch=arch)
    errors = []
    for n in backbone:
        if n not in state:
            rep.missing.append(n)
            continue
        a = state[n]
        if a.dtype.kind != "f":
            errors.append(f"{n}: dtype {a.dtype}, expected a floating tensor")
        elif tuple(a.shape) != backbone[n]:
            errors.append(f"{n}: shape {tuple(a.shape)} in the file, {backbone[n]} in the model")
    if errors:
        raise PretrainedError(f"{name}: {len(errors)} tensor(s) do not fit the {want} backbone: "
                              + "; ".join(errors[:5]) + (" ..." if len(errors) > 5 else ""))
    if rep.missing and strict_backbone:
        raise PretrainedError(f"{name}: {len(rep.missing)} backbone tensor(s) missing from the "
                              f"file: {rep.missing[:5]}" + (" ..." if len(rep.missing) > 5 else "")
                              + " (strict_backbone=False loads the rest)")
    for n in backbone:
        if n in state:
            core.set(n, np.ascontiguousarray(state[n], dtype=np.float32))
            rep.loaded.append(n)
    for k in state:
        if k in backbone or k.endswith("num_batches_tracked"):
            continue
        why = ("ImageNet classifier" if k.startswith(("fc.", "classifier."))
               else "not a backbone tensor")
        rep.skipped.append((k, why))
    return rep
