"""Every shipped TOML config in configs/ loads with Config.from_toml and says what it is
(the identity pre-training config, *_pretrain.toml, loads with PretrainConfig: its test is
in test_pretrain.py)."""
import glob
import os

import pytest

from glae.config import Config

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
FILES = sorted(f for f in glob.glob(os.path.join(ROOT, "*.toml")) if not f.endswith("_pretrain.toml"))


def test_configs_present():
    names = {os.path.basename(f) for f in FILES}
    assert {"glae_morph2_random_resnet18.toml", "glae_morph2_random_resnet50.toml",
            "glae_cacd.toml", "glae_chalearn_lap2015.toml", "glae_mivia.toml",
            "lae_two_stage.toml"} <= names


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_config_loads(path):
    cfg = Config.from_toml(path)
    assert cfg.stage1_epochs == 24 and cfg.stage2_epochs == 8 and cfg.batch_size == 256
    assert abs(cfg.lr(1) - 0.005) < 1e-12 and abs(cfg.lr(2) - 0.001) < 1e-12
    with open(path) as f:
        header = "".join(line for line in f if line.startswith("#"))
    assert "Table" in header and "prepare" in header  # which row, which data command
    if os.path.basename(path).startswith("lae"):
        assert cfg.stage2_loss == "lae" and cfg.head == "gap"
    else:
        assert cfg.head == "fr+pa" and cfg.stage2_loss == "glae"
    assert cfg.stage2_sampler == "class_balanced"  # the papers' rows keep the papers' sampler
    assert Config.from_json(cfg.to_json()) == cfg
