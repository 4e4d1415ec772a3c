"""The layered config loader: defaults <- YAML (with base:) <- key=value; validation before any work."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from xaisec.config import dump_config, load_config, merge, parse_overrides, read_yaml, require
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
    ("explainers={a: 1}", "expected a list"),
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


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("train: {epochs: 1}\ntrain: {epochs: 2}\n", "duplicate key 'train'"),
    ("[" * 20000, "nested too deeply|not valid YAML"),
    ("a: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
])
def test_hostile_files_are_refused(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(Cfg, path)


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="not a text file"):
        load_config(Cfg, path)


def test_base_cycles_and_packaged_names(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        read_yaml(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        read_yaml(tmp_path / "self.yaml")
    (tmp_path / "mine.yaml").write_text("base: latka_badnets\nattack: {epochs: 2}\n")
    data = read_yaml(tmp_path / "mine.yaml")  # a packaged config found by its name
    assert data["attack"]["recipe"] == "latka_badnets" and data["attack"]["epochs"] == 2


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e400"])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ConfigError, match="finite|too large"):
        load_config(Cfg, overrides=[f"train.lr={value}"])


def test_replacing_a_component_drops_its_options():
    base = {"trigger": {"name": "patch", "options": {"size": 4}}, "attack": {"target_map": "square",
                                                                               "target_map_options": {"size": 3}}}
    assert merge(base, {"trigger": {"name": "moire"}})["trigger"] == {"name": "moire"}
    assert merge(base, {"trigger": {"name": "patch"}})["trigger"]["options"] == {"size": 4}  # same component
    assert merge(base, {"attack": {"target_map": "circle"}})["attack"] == {"target_map": "circle"}
    assert merge(base, {"trigger": {"name": "moire", "options": {"seed": 1}}})["trigger"]["options"] == {"seed": 1}


def test_config_show_and_reference(capsys):
    from xaisec.cli import main

    assert main(["config", "show", "latka_badnets", "attack.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "recipe: latka_badnets" in out and "epochs: 3" in out and "threads: 1" in out
    assert main(["config", "reference"]) == 0
    ref = capsys.readouterr().out
    assert "| `attack.lam` | float | 0.9 |" in ref and "| `data.options` | mapping | {} |" in ref


def test_docs_config_reference_is_current():
    """docs/config_reference.md is the output of `xaisec config reference` (regenerate it when a schema changes)."""
    from pathlib import Path

    from xaisec.config_reference import markdown, packaged_schemas

    expected = markdown(packaged_schemas())
    doc = Path(__file__).parents[1] / "docs" / "config_reference.md"
    assert doc.read_text() == expected, "run: xaisec config reference > docs/config_reference.md"


@dataclass
class WithOptions:
    name: str = "x"
    seed: Optional[int] = None
    options: dict = field(default_factory=dict)


def test_required_marker_must_be_overridden(tmp_path):
    (tmp_path / "req.yaml").write_text("seed: ???\noptions: {path: '???', keep: 1}\n")
    with pytest.raises(ConfigError, match=r"^seed is required by this config .* e\.g\. seed=\.\.\.$"):
        load_config(WithOptions, tmp_path / "req.yaml")
    with pytest.raises(ConfigError, match=r"^options\.path is required by this config"):
        load_config(WithOptions, tmp_path / "req.yaml", ["seed=1"])
    cfg = load_config(WithOptions, tmp_path / "req.yaml", ["seed=1", "options.path=/data"])
    assert cfg.seed == 1 and cfg.options == {"path": "/data", "keep": 1}
