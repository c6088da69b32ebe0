"""The layering rule of docs/architecture.md: python -> nn / train / data / metrics -> ops ->
core, and no include goes up. A file may include headers of its own layer or of any layer
below it; this test reads every quoted #include in csrc/ and fails on one that points up
(or on a ../ path, which the one include style rules out)."""
import pathlib
import re

import pytest

CSRC = pathlib.Path(__file__).resolve().parent.parent / "csrc"
RANK = {"core": 0, "ops": 1, "nn": 2, "train": 2, "data": 2, "metrics": 2, "python": 3}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
GENERATED = {"glae_build_info.h"}  # written by setup.py into the build folder


def sources():
    return sorted(p for p in CSRC.rglob("*") if p.suffix in (".c", ".h", ".cu", ".cuh"))


def includes(path):
    return INCLUDE.findall(path.read_text(encoding="utf-8"))


def test_every_source_lives_in_a_known_layer():
    assert sources(), "no sources found under csrc/"
    for p in sources():
        layer = p.relative_to(CSRC).parts[0]
        assert layer in RANK, f"{p.relative_to(CSRC)}: folder {layer!r} is not a layer of {sorted(RANK)}"


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(CSRC)))
def test_includes_point_down(path):
    own = path.relative_to(CSRC).parts[0]
    for inc in includes(path):
        if inc in GENERATED:
            continue
        assert not inc.startswith("."), f"{path.relative_to(CSRC)}: include {inc!r}: name it from csrc/"
        target = CSRC / inc
        assert target.exists(), f"{path.relative_to(CSRC)}: include {inc!r} does not exist under csrc/"
        layer = pathlib.PurePosixPath(inc).parts[0]
        assert RANK[layer] <= RANK[own], (
            f"{path.relative_to(CSRC)} ({own}) includes {inc} ({layer}), a layer above it: "
            f"layers point down (python -> nn/train/data/metrics -> ops -> core)")


def test_the_checker_catches_an_upward_include(tmp_path):
    """the rule itself, on a made-up tree: core including ops must be caught"""
    bad = 'int x;\n#include "ops/backend.h"\n'
    incs = INCLUDE.findall(bad)
    assert incs == ["ops/backend.h"]
    assert RANK[incs[0].split("/")[0]] > RANK["core"]
