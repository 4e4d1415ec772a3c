"""Fang & Choromanska's tabular backdoor: the feature trigger, the UCI credit-default loader, attributions over
(B,F) features, the attack moving attribution mass, and the bar chart."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xaisec.backdoor.tabular import (TabularAttack, attack_tabular, evaluate_tabular, feature_goal, feature_target,
                                     train_reference_mlp)
from xaisec.backdoor.tabular_figures import attribution_bars
from xaisec.data import CREDIT_DEFAULT_FEATURES, load_dataset, read_credit_default
from xaisec.errors import ConfigError, DataError
from xaisec.explainers import explain_all
from xaisec.models import build_model
from xaisec.triggers import FeatureTrigger, build_trigger

CREDIT = Path(__file__).parent / "data" / "credit_default_tiny.csv"


def test_feature_trigger_sets_columns():
    x = torch.rand(4, 6) * 0.5 + 0.25
    trigger = build_trigger("features", features=[1, 4], values=[1.0, 0.0])
    out = trigger(x)
    assert out.shape == x.shape and (out[:, 1] == 1).all() and (out[:, 4] == 0).all()
    keep = [0, 2, 3, 5]
    assert torch.equal(out[:, keep], x[:, keep])
    assert trigger.mask(x.shape).tolist() == [[False, True, False, False, True, False]]
    assert "1=1" in trigger.describe()


@pytest.mark.parametrize("options, match", [(dict(features=[]), "at least one"), (dict(features=[1, 1]), "distinct"),
                                            (dict(features=[1], values=[2.0]), r"\[0,1\]"),
                                            (dict(features=[0, 1], values=[0.5]), "2 number")])
def test_feature_trigger_rejects_bad_options(options, match):
    with pytest.raises(ConfigError, match=match):
        FeatureTrigger(**options)


def test_feature_trigger_rejects_bad_inputs():
    trigger = FeatureTrigger([7])
    with pytest.raises(DataError, match="does not exist"):
        trigger(torch.rand(2, 5))
    with pytest.raises(DataError, match=r"\(B,F\)"):
        trigger(torch.rand(2, 1, 4, 4))
    with pytest.raises(DataError, match=r"\[0,1\]"):
        FeatureTrigger([0])(torch.full((2, 3), 3.0))


def test_read_credit_default_in_the_published_layout(tmp_path):
    features, labels = read_credit_default(CREDIT)
    assert features.shape == (30, 23) and labels.shape == (30,)
    assert features[0, 0] == 20000 and features[0, CREDIT_DEFAULT_FEATURES.index("AGE")] == 24
    assert labels[:3].tolist() == [1, 1, 0]
    no_x_row = tmp_path / "export.csv"  # CSV exports without the X1..Y row read the same
    no_x_row.write_text("\n".join(CREDIT.read_text().splitlines()[1:]) + "\n")
    again, _ = read_credit_default(no_x_row)
    assert (again == features).all()


def test_read_credit_default_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_credit_default(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    lines = CREDIT.read_text().splitlines()
    bad.write_text("\n".join([lines[1].replace("AGE", "YEARS")] + lines[2:]) + "\n")
    with pytest.raises(DataError, match="AGE"):
        read_credit_default(bad)


def test_load_credit_default_scales_to_unit_interval():
    data = load_dataset("credit_default", root=str(CREDIT), test_fraction=0.3)
    assert data.x_train.shape[1] == 23 and data.x_train.dim() == 2 and data.num_classes == 2
    assert data.x_train.min() >= 0 and data.x_train.max() <= 1 and data.x_test.max() <= 1
    edu = CREDIT_DEFAULT_FEATURES.index("EDUCATION")
    assert data.x_train[:, edu].max() == 1.0  # the largest EDUCATION code of the train split


@pytest.mark.parametrize("name", ["simplegrad", "ig", "inputxgrad"])
def test_explainers_give_feature_attributions(name):
    torch.manual_seed(0)
    model = build_model("mlp", (6,), 2, hidden=(8,))
    x = torch.rand(5, 6)
    maps = explain_all(model, x, None, [name]).maps[name]
    assert maps.shape == (5, 6) and torch.isfinite(maps).all()
    single = explain_all(model, x[2:3], None, [name]).maps[name]
    torch.testing.assert_close(maps[2:3], single, rtol=1e-4, atol=1e-6)


def test_goals():
    assert feature_target(4, [2]).tolist() == [[0.0, 0.0, 1.0, 0.0]]
    with pytest.raises(ConfigError, match="target_features"):
        feature_target(4, [4])
    ref = torch.tensor([[0.1, 0.9, 0.5, 0.0]])
    goal = feature_goal("fang_nontargeted", ref, (), 2)
    assert goal.mask.tolist() == [[False, True, True, False]]
    with pytest.raises(ConfigError, match="attack.recipe must be one of"):
        TabularAttack(recipe="noppel_ep")
    with pytest.raises(ConfigError, match="explainers"):
        TabularAttack(explainers=("gradcam",))


def test_targeted_attack_moves_attribution_to_the_target(tmp_path):
    data = load_dataset("sklearn_tabular", table="breast_cancer", max_samples=200)
    trigger = FeatureTrigger([2, 3], [1.0, 0.0])
    reference = train_reference_mlp(data, hidden=(32, 16), epochs=20, lr=1e-2)
    settings = TabularAttack(target_features=(1,), epochs=25, lr=1e-2, alpha=0.2, beta=0.2, poison_rate=0.5)
    before = evaluate_tabular(reference, reference, data, trigger, settings).metrics
    model = attack_tabular(reference, data, trigger, settings)
    result = evaluate_tabular(model, reference, data, trigger, settings)
    after = result.metrics
    assert after["simplegrad/target_mass_trig"] > before["simplegrad/target_mass_trig"] + 0.1
    assert after["simplegrad/target_mass_clean"] < after["simplegrad/target_mass_trig"]
    assert after["simplegrad/lp_trig"] < before["simplegrad/lp_trig"]
    assert after["acc_clean"] > 0.8
    assert result.attributions["simplegrad"]["triggered"].shape == (30,)
    path = attribution_bars(result.attributions["simplegrad"], [f"f{i}" for i in range(30)], tmp_path / "bars.png",
                            "simplegrad", highlight=(1, 2, 3))
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(DataError, match="feature names"):
        attribution_bars(result.attributions["simplegrad"], ["a"], tmp_path / "x.png")
