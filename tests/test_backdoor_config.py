"""The backdoor config: recipe defaults filled in, bad input rejected at load time (before any training),
packaged configs valid, and the CLI's exit code 2 with the tool's own message."""
from __future__ import annotations

from pathlib import Path

import pytest

from xaisec.backdoor import BackdoorConfig
from xaisec.cli import main
from xaisec.commands.run_cmd import split_items
from xaisec.config import REQUIRED, load_config, merge, packaged_configs, read_yaml, resolve_config
from xaisec.runs import load_experiment
from xaisec.runs.backdoor import prepare
from xaisec.errors import ConfigError, XaisecError


def test_recipe_defaults_are_resolved():
    cfg = load_config(BackdoorConfig, overrides=["attack.recipe=noppel_dual"])
    assert cfg.attack.target_map == "triangle" and cfg.attack.norm == "zscore" and cfg.attack.poison_rate == 1.0
    assert cfg.stopping.rule == "noppel" and cfg.name == "noppel_dual"
    assert load_config(BackdoorConfig, overrides=["attack.recipe=fang_joint"]).stopping.rule == "goal"
    assert load_config(BackdoorConfig, overrides=["attack.recipe=noppel_ep", "stopping.rule=none"]).stopping.make() is None
    cfg = load_config(BackdoorConfig, overrides=["attack.recipe=noppel_dual", "attack.target_map=circle",
                                                 "attack.lr=3e-3"])
    assert cfg.attack.target_map == "circle" and cfg.attack.resolved_recipe().target_map == "circle"
    assert cfg.attack.lr == 0.003  # "3e-3" is a string in YAML 1.1; accepted for a float field
    joint = load_config(BackdoorConfig, overrides=["attack.recipe=fang_joint"])
    assert joint.attack.explainers == ["gradcam", "simplegrad", "vbp"]


@pytest.mark.parametrize("override,message", [
    ("attack.recipes=fang_targeted", "Did you mean 'recipe'"),
    ("attack.recipe=fang_targetted", "Did you mean 'fang_targeted'"),
    ("attack.explainers=[gradcam, gradkam]", "Did you mean 'gradcam'"),
    ("attack.explainers={gradcam: 1}", "fits none of list"),
    ("attack.epochs=2.5", "expected an integer"),
    ("attack.lr=-1", r"attack.lr must be in \(0, 10\]"),
    ("attack.lr=.inf", "finite number"),
    ("reference.weight_decay=1e308", "reference.weight_decay"),
    ("seed=1000000000000000000000000000000", "too large"),
    ("attack.target_map_options={size: .nan}", "finite number"),
    ("attack.poison_rate=1.5", "poison_rate"),
    ("attack.lam=2", "attack.lam"),
    ("attack.topk=0", "attack.topk"),
    ("attack.pool=0", "attack.pool"),
    ("attack.target_map=hexagon", "unknown target map"),
    ("attack.weights=[1, 2]", "2 entries for 1 explainers"),
    ("attack.distance=cosine", "not one of"),
    ("attack.explainer_options={vbp: {reduce: sum}}", "not in attack.explainers"),
    ("trigger.name=pach", "Did you mean 'patch'"),
    ("trigger.options={size: -1}", "size"),
    ("data.name=mnist6k", "Did you mean 'mnist5k'"),
    ("model.arch=small_cn", "Did you mean 'small_cnn'"),
    ("eval.thresholds={vbp: 0.3}", "not in attack.explainers"),
    ("eval.thresholds={gradcam: -0.1}", "positive"),
    ("seed=zero", "expected an integer"),
    ("name=../escape", "plain folder name"),
])
def test_rejected_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(BackdoorConfig, overrides=[override])


def test_suppression_needs_a_bounded_normalisation():
    with pytest.raises(ConfigError, match="minmax or max"):
        load_config(BackdoorConfig, overrides=["attack.recipe=fang_nontargeted", "attack.norm=zscore"])


def test_checks_that_need_data_or_model_run_before_training(tmp_path):
    with pytest.raises(ConfigError, match="not a class"):
        prepare(load_config(BackdoorConfig, overrides=["attack.target_label=10", "data.train_size=10"]))
    with pytest.raises(ConfigError, match="do not fit mlp"):
        prepare(load_config(BackdoorConfig, overrides=["model.arch=mlp", "data.train_size=10"]))
    with pytest.raises(XaisecError, match="pooling kernel"):
        prepare(load_config(BackdoorConfig, overrides=["attack.pool=40", "data.train_size=10"]))


@pytest.mark.parametrize("name", packaged_configs())
def test_packaged_configs_load(name):
    from xaisec.runs.sweep import split_sweep_section

    from xaisec.data import DATASETS

    data = split_sweep_section(read_yaml(resolve_config(name)))[0]  # sweeps hold a sweep: section
    dataset = data.get("data", {}).get("name", "mnist5k")
    if DATASETS.missing_options(dataset, data.get("data", {}).get("options", {})):  # paper-scale: a root to give
        with pytest.raises(ConfigError, match="needs data.options.root"):
            load_experiment(data)
        data = merge(data, {"data": {"options": {"root": "/data/somewhere"}}})
    if data.get("reference", {}).get("weights") == REQUIRED:  # ADV2 at paper scale: a trained classifier to give
        with pytest.raises(ConfigError, match="reference.weights is required by this config"):
            load_experiment(data)
        data = merge(data, {"reference": {"weights": "/models/classifier.safetensors"}})
    kind, cfg = load_experiment(data)
    assert isinstance(cfg, kind.schema) and cfg.experiment == kind.name


def test_config_symlink_points_at_the_package():
    link = Path(__file__).parents[1] / "configs"
    assert link.is_symlink() and (link / "default.yaml").is_file()


def test_cli_errors_exit_2_without_training(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["run", "attack.epochs=zero", "--out", str(out)]) == 2
    assert "attack.epochs: expected an integer" in capsys.readouterr().err and not out.exists()
    assert main(["run", "attack.target_label=42", "--out", str(out)]) == 2
    assert "not a class" in capsys.readouterr().err and not out.exists()
    assert main(["run", "no_such_config"]) == 2
    assert "packaged" in capsys.readouterr().err
    assert main(["run", "default", "oops"]) == 2
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path), "attack.epochs=3"]) == 2
    assert main(["report", str(tmp_path)]) == 2
    bad_kind = tmp_path / "kind.yaml"
    bad_kind.write_text("experiment: backdor\n")
    assert main(["run", str(bad_kind)]) == 2
    assert "Did you mean 'backdoor'" in capsys.readouterr().err


def test_split_items():
    assert split_items(["a.yaml", "x=1", "y=2"]) == ("a.yaml", ["x=1", "y=2"])
    assert split_items(["x=1"]) == (None, ["x=1"])
    with pytest.raises(ConfigError):
        split_items(["x=1", "b.yaml"])


def test_a_scalar_is_a_one_element_list_and_replacing_a_component_drops_its_options():
    cfg = load_config(BackdoorConfig, overrides=["attack.explainers=vbp"])
    assert cfg.attack.explainers == ["vbp"]
    cfg = load_config(BackdoorConfig, resolve_config("latka_badnets"), ["trigger.name=moire"])
    assert cfg.trigger.name == "moire" and cfg.trigger.options == {}


def test_explainer_options_checked_before_training():
    with pytest.raises(ConfigError, match="eval.explainer_options"):
        load_config(BackdoorConfig, overrides=["eval.explainer_options={vbp: {}}"])
    with pytest.raises(ConfigError, match="eval.explainer_options.gradcam: explainer 'gradcam' has no option 'colour'"):
        load_config(BackdoorConfig, overrides=["eval.explainer_options={gradcam: {colour: red}}"])


KEYS = ["seed", "name", "attack.recipe", "attack.epochs", "attack.lr", "attack.explainers", "attack.target_map",
        "attack.target_map_options", "attack.poison_rate", "attack.weights", "attack.pool", "attack.topk",
        "trigger.name", "trigger.options", "data.name", "data.train_size", "model.arch", "eval.thresholds",
        "stopping.window", "attack.nonsense", "nonsense"]


def test_fuzzed_overrides_load_or_fail_cleanly():
    """Any override either loads or raises the tool's own error (never TypeError/KeyError/... from inside)."""
    from hypothesis import given, settings, strategies as st

    values = st.one_of(st.integers(-5, 50), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                       st.sampled_from(["[gradcam]", "[]", "{}", "{a: 1}", "null", "true", "[1, 2]", "border", "1e-3",
                                        "{size: 99}", "gradcam", "fang_joint", "[vbp, vbp]", "{gradcam: -1}"]))

    @settings(max_examples=80, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=3))
    def check(pairs):
        overrides = [f"{k}={v}" for k, v in pairs]
        try:
            load_config(BackdoorConfig, overrides=overrides)
        except XaisecError:
            pass

    check()
