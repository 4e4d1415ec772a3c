"""The layered config loader: defaults <- YAML (with base:) <- key=value; validation before any work."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from xaisec.config import dump_config, load_config, parse_overrides, require
from xaisec.errors import ConfigError


@dataclass
class Train:
    epochs: int = 3
    lr: float = 1e-3

    def __post_init__(self):
        require(self.lr > 0, f"train.lr must be positive, got {self.lr}")


@dataclass
class Cfg:
    name: str = "demo"
    method: Literal["gradcam", "vbp"] = "gradcam"
    seed: Optional[int] = None
    train: Train = field(default_factory=Train)
    explainers: list[str] = field(default_factory=lambda: ["gradcam"])


def test_layers(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {epochs: 7, lr: 0.1}\nname: base\n")
    (tmp_path / "exp.yaml").write_text("base: base.yaml\nname: exp\ntrain: {lr: 0.01}\n")
    cfg = load_config(Cfg, tmp_path / "exp.yaml", ["train.epochs=9", "explainers=[vbp, gradcam]", "seed=3"])
    assert cfg == Cfg("exp", "gradcam", 3, Train(9, 0.01), ["vbp", "gradcam"])
    assert dump_config(cfg)["train"] == {"epochs": 9, "lr": 0.01}
    assert load_config(Cfg) == Cfg()
    assert isinstance(load_config(Cfg, overrides=["train.lr=1"]).train.lr, float)


@pytest.mark.parametrize("override,message", [
    ("train.epoch=5", "unknown key 'epoch'. Did you mean 'epochs'"),
    ("trian.epochs=5", "Did you mean 'train'"),
    ("train.lr=-1", "must be positive"),
    ("method=gradcan", "did you mean 'gradcam'"),
    ("train.epochs=1.5", "expected an integer"),
    ("train.epochs=true", "expected an integer"),
    ("explainers=vbp", "expected a list"),
    ("train=3", "expected a mapping"),
    ("seed=abc", "fits none"),
    ("noequals", "key=value"),
    ("a..b=1", "key=value"),
])
def test_rejections(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Cfg, overrides=[override])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Cfg, tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Cfg, tmp_path / "list.yaml")


def test_parse_overrides_nesting():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
