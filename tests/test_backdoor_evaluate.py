"""Metrics on hand-made inputs: ASR excludes target-class samples, FSR/CR threshold directions, trigger mass,
and recipe-dependent directions (the stopping rules: test_backdoor_stopping.py)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from xaisec.backdoor.evaluate import (PAPER_THRESHOLDS, EvalSetup, ModelOutputs, attack_success_rate,
                                      classification_metrics, correct_rate, default_threshold, fooling_success_rate,
                                      map_metrics, paper_threshold, topk_accuracy, trigger_mass)
from xaisec.backdoor.recipes import get_recipe
from xaisec.target_maps import fixed_target


def test_topk_accuracy():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [2.0, 3.0, 1.0]])
    y = torch.tensor([0, 0, 0])
    assert topk_accuracy(logits, y, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, y, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, y, 5) == 1.0  # k larger than the classes


def test_asr_excludes_target_class_samples():
    pred = torch.tensor([2, 2, 2, 0, 1])
    y = torch.tensor([2, 2, 0, 1, 1])  # the first two are of the target class: not counted
    assert attack_success_rate(pred, y, target=2) == pytest.approx(1 / 3)
    assert math.isnan(attack_success_rate(pred, torch.full((5,), 2), target=2))


def test_fsr_and_cr_directions():
    lp = torch.tensor([0.05, 0.1, 0.3, 0.5])
    assert fooling_success_rate(lp, 0.2) == 0.5  # small loss = close to the attacker's goal = fooled
    assert fooling_success_rate(lp, 0.01) == 0.0
    assert correct_rate(lp, 0.2) == 0.5
    assert correct_rate(torch.tensor([0.4, 0.6]), 0.2) == 1.0  # clean maps far from the goal are correct
    assert paper_threshold("gradcam", "targeted") == 0.2 and paper_threshold("vbp", "non-targeted") == 0.1
    assert paper_threshold("gradshap", "targeted") is None and default_threshold("gradshap", "targeted") > 0
    assert set(PAPER_THRESHOLDS) == {"targeted", "non-targeted"}


def test_trigger_mass():
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :2] = True
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, 0, 0] = 3.0
    maps[0, 0, 3, 3] = 1.0
    maps[1, 0, 3, 3] = 2.0
    maps[1, 0, 0, 1] = -5.0  # negative evidence does not count
    torch.testing.assert_close(trigger_mass(maps, mask), torch.tensor([0.75, 0.0]))


def _setup(recipe="fang_targeted", **kw):
    y = torch.tensor([0, 1, 1, 2])
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., :2, :2] = True
    args = dict(recipe=get_recipe(recipe), explainers=["gradcam"], y=y, target_label=1, trigger_mask=mask, pool=2,
                thresholds={"gradcam": 0.2}, target_map="border", target_options={})
    args.update(kw)
    return EvalSetup(**args)


def _outputs(maps_clean, maps_trig, logits_trig=None):
    logits = torch.eye(3)[[0, 1, 1, 2]] * 5
    return ModelOutputs(logits, logits if logits_trig is None else logits_trig, {"gradcam": maps_clean},
                        {"gradcam": maps_trig})


def test_map_metrics_on_a_perfect_targeted_attack():
    border = torch.nn.functional.interpolate(fixed_target("border", (4, 4)), size=(8, 8)).expand(4, 1, 8, 8)
    clean = torch.zeros(4, 1, 8, 8)
    clean[..., 3:5, 3:5] = 1.0  # object in the centre
    out = _outputs(clean, border.clone())
    m = map_metrics(out, {"gradcam": clean}, _setup(), "gradcam", paper_value=0.2)
    assert m["fsr"].value == 1.0 and m["cr"].value == 1.0
    assert m["lp_attack"].value == pytest.approx(0.0) and m["mse_ref_clean"].value == pytest.approx(0.0)
    assert m["mse_ref_trig"].direction == "higher" and m["mse_ref_clean"].direction == "lower"
    assert m["iou_ref_clean"].value == pytest.approx(1.0)
    assert "fsr@paper" not in m
    # a stricter threshold is reported next to the paper's
    m = map_metrics(out, {"gradcam": clean}, _setup(thresholds={"gradcam": 0.1}), "gradcam", paper_value=0.2)
    assert m["fsr@paper"].value == 1.0 and "cr@paper" in m
    # nothing changed: FSR 0, CR 1
    m = map_metrics(_outputs(clean, clean), {"gradcam": clean}, _setup(), "gradcam", paper_value=0.2)
    assert m["fsr"].value == 0.0 and m["cr"].value == 1.0
    # inverted: clean maps are the attack group
    inv = _setup("fang_inverted")
    m = map_metrics(_outputs(border.clone(), clean), {"gradcam": clean}, inv, "gradcam", paper_value=0.2)
    assert m["fsr"].value == 1.0 and m["cr"].value == 1.0 and m["mse_ref_clean"].direction == "higher"


def test_map_metrics_for_preserving_and_badnets_recipes():
    clean = torch.zeros(4, 1, 8, 8)
    clean[..., 3:5, 3:5] = 1.0
    trig = clean.clone()
    trig[..., :2, :2] = 2.0  # points at the trigger
    ep = map_metrics(_outputs(clean, clean.clone()), {"gradcam": clean}, _setup("noppel_ep"), "gradcam", 0.2)
    assert ep["fsr"].value == 1.0 and "cr" not in ep and ep["mse_ref_trig"].direction == "lower"
    bad = map_metrics(_outputs(clean, trig), {"gradcam": clean}, _setup("latka_badnets"), "gradcam", 0.2)
    assert "fsr" not in bad and bad["trigger_mass_trig"].value == pytest.approx(8 / 12)
    assert bad["trigger_mass_trig"].direction == "none"


def test_classification_metrics_directions():
    logits_trig = torch.eye(3)[[1, 1, 1, 1]] * 5
    m = classification_metrics(_outputs(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8), logits_trig),
                               _setup("noppel_dual"))
    assert m["top1_clean"].value == 1.0 and m["asr"].value == 1.0 and m["top1_trig"].direction == "none"
    assert "asr" not in classification_metrics(_outputs(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8)), _setup())


def test_recipe_properties():
    r = get_recipe("fang_nontargeted")
    assert r.attack_type == "non-targeted" and r.changes_maps and not r.changes_labels
    assert get_recipe("noppel_ep").changes_labels and not get_recipe("noppel_ep").changes_maps
    assert not get_recipe("latka_badnets").explanation_aware
    assert dataclasses.replace(r, inverted=True).inverted


def test_trigger_hit_pointing_game():
    from xaisec.backdoor.evaluate import trigger_hit
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., 6:, 6:] = True
    maps = torch.zeros(3, 1, 8, 8)
    maps[0, 0, 7, 7] = 1  # on the trigger
    maps[1, 0, 5, 5] = 1  # next to it
    maps[2, 0, 0, 0] = 1  # far away
    assert trigger_hit(maps, mask).tolist() == [True, False, False]
    assert trigger_hit(maps, mask, margin=1).tolist() == [True, True, False]
