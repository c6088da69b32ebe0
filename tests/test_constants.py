"""Constants the Python side takes from the C engine instead of repeating them: the batch
norm eps and the ResNet stage table (csrc/nn/resnet.c) as _C.BN_EPS / _C.RESNET_STAGES, the
EfficientNetV2 tables (csrc/nn/effnet.c) as _C.EFFNET_STAGES (checked against torchvision's
in tests/test_effnet_model.py)."""
import re
import types

import numpy as np
import pytest

from glae import _C, config, export, weights
from glae.model import CoreModel

# torchvision's tables, written out here independently: (blocks, width, out) per stage
TORCHVISION = {
    "resnet18": ((2, 64, 64), (2, 128, 128), (2, 256, 256), (2, 512, 512)),
    "resnet50": ((3, 64, 256), (4, 128, 512), (6, 256, 1024), (3, 512, 2048)),
}


def test_values():
    assert _C.BN_EPS == float(np.float32(1e-5))  # the float32 the batch norms add
    assert _C.RESNET_STAGES == TORCHVISION


@pytest.mark.parametrize("backbone", sorted(TORCHVISION))
def test_stage_table_is_what_the_engine_builds(backbone):
    core = CoreModel(backbone=backbone, head="gap", input_size=32, seed=0)
    shapes = {n: s for n, s, *_ in core.param_table()}
    for s, (nb, width, out) in enumerate(_C.RESNET_STAGES[backbone], 1):
        blocks = {int(m.group(1)) for n in shapes if (m := re.match(rf"layer{s}\.(\d+)\.", n))}
        assert blocks == set(range(nb))
        assert shapes[f"layer{s}.0.conv1.weight"][0] == width
        bottleneck = out != width  # a Bottleneck has a third conv, widening 4x
        assert (f"layer{s}.0.conv3.weight" in shapes) == bottleneck
        last = "conv3" if bottleneck else "conv2"
        assert shapes[f"layer{s}.{nb - 1}.{last}.weight"][0] == out


def test_python_reads_them():
    assert export.BN_EPS == _C.BN_EPS
    assert config.BACKBONES == tuple(_C.RESNET_STAGES) + tuple(_C.EFFNET_STAGES)
    assert weights._EFF_ARCHS[(2, 4, 4, 6, 9, 15)] == "efficientnet_v2_s"
    assert weights._EFF_ARCHS[(3, 5, 5, 7, 14, 18, 5)] == "efficientnet_v2_m"
    assert weights._ARCHS[("basic", (2, 2, 2, 2))] == "resnet18"
    assert weights._ARCHS[("bottleneck", (3, 4, 6, 3))] == "resnet50"
    assert weights._ARCHS[("basic", (3, 4, 6, 3))] == "resnet34"  # torchvision's, not built


def test_export_walks_the_c_table(monkeypatch):
    pytest.importorskip("onnx")
    core = CoreModel(backbone="resnet18", head="gap", input_size=32, seed=0)

    def convs(graph):
        return sum(n.op_type == "Conv" for n in graph.graph.node)

    full = convs(export.build_graph(core))
    # one block per stage in the table: the graph follows it (layer*.1 are never read)
    fake = types.SimpleNamespace(RESNET_STAGES={"resnet18": tuple((1, w, o) for _, w, o in
                                                                  TORCHVISION["resnet18"])})
    monkeypatch.setattr(export, "_C", fake)
    assert convs(export.build_graph(core)) == full - 4 * 2
