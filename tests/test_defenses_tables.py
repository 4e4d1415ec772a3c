"""The numbers and tables of a ``fang_defenses`` run from hand-made results: the TV weight and pruned fraction the
tables pick, metric directions, caveats, Markdown shape."""
from __future__ import annotations

import pytest

from xaisec.defenses.tables import build_tables, caveats, headline, metric_records, pruning_kept, tv_choice

CFG = {"n_eval": 40, "measure": ["fine_pruning", "tv_denoising", "neural_cleanse"],
       "neural_cleanse": {"images": 10, "repeats": 2}, "activation_clustering": {"pairs": 20},
       "fine_pruning": {"max_accuracy_drop": 0.05},
       "tv_denoising": {"weights": [0.0, 0.1, 0.2], "max_accuracy_drop": 0.05},
       "rebn": {"images": 10}, "audit": {"suspects": 5, "checks": None}}


def _results() -> dict:
    ref = {"role": "reference", "arch": "small_cnn", "dataset": "d", "attack_metric": "fsr",
           "metrics": {"acc_clean": 0.90, "fsr": 0.0},
           "tv_denoising": {"rows": [{"weight": 0.0, "acc_clean": 0.90, "acc_trig": 0.9, "fsr": 0.0},
                                     {"weight": 0.1, "acc_clean": 0.86, "acc_trig": 0.8, "fsr": 0.0},
                                     {"weight": 0.2, "acc_clean": 0.70, "acc_trig": 0.6, "fsr": 0.0}]},
           "neural_cleanse": {"model_anomaly_index": 1.0, "threshold": 2.0, "flagged_classes": [],
                              "repeats": [[1.0, []], [3.0, [2]]]}}
    att = {"role": "attacked", "arch": "small_cnn", "dataset": "d", "attack_metric": "fsr",
           "metrics": {"acc_clean": 0.88, "fsr": 1.0},
           # the attacked model's own accuracy drops, but the tables compare with the clean reference's 0.90
           "tv_denoising": {"rows": [{"weight": 0.0, "acc_clean": 0.88, "acc_trig": 0.8, "fsr": 1.0},
                                     {"weight": 0.1, "acc_clean": 0.85, "acc_trig": 0.7, "fsr": 0.6},
                                     {"weight": 0.2, "acc_clean": 0.84, "acc_trig": 0.5, "fsr": 0.2}]},
           "fine_pruning": {"fractions": [0.0, 0.5, 0.9], "accuracy": [0.88, 0.86, 0.2], "metric": "fsr",
                            "values": [1.0, 0.4, 0.0], "fraction_accuracy_kept": 0.5},
           "neural_cleanse": {"model_anomaly_index": 0.5, "threshold": 2.0, "flagged_classes": [],
                              "repeats": [[0.5, []], [0.7, []]]}}
    return {"reference_small_cnn": ref, "fang_targeted": att}


def test_tv_weight_and_pruned_fraction_follow_the_clean_reference():
    results = _results()
    assert tv_choice(results, "fang_targeted", 0.05)["weight"] == 0.1  # 0.84 < 0.90 - 0.05 rules out 0.2
    assert tv_choice(results, "reference_small_cnn", 0.05)["weight"] == 0.1
    assert tv_choice(results, "fang_targeted", 0.2)["weight"] == 0.2
    assert pruning_kept(results["fang_targeted"]["fine_pruning"]) == (0.5, 0.4)


def test_records_directions_and_spread():
    records = metric_records(_results(), CFG)
    assert records["fang_targeted/tv_denoising/fsr"].value == 0.6
    assert records["fang_targeted/tv_denoising/weight"].direction == "none"
    assert records["fang_targeted/fine_pruning/fsr"].value == 0.4
    nc = records["fang_targeted/neural_cleanse/anomaly_index"]
    assert (nc.value, nc.direction) == (0.5, "lower") and nc.std == pytest.approx(0.1)
    assert "reference_small_cnn/fine_pruning/fsr" not in records  # not measured there
    assert headline(records)[0].startswith("reference_small_cnn: NC index 1.00")


def test_tables_and_caveats():
    tables = {t.title.split(":")[0].split(" (")[0]: t for t in build_tables(_results(), CFG)}
    assert tables["Neural Cleanse stability"].rows[0] == ["no attack (small_cnn)", "1.00, 3.00", "[]; [2]"]
    tv = tables["TV denoising"]
    assert tv.rows[1][:4] == ["fang_targeted", "0.1", "–", "60.0"]
    md = tv.markdown()
    assert md.startswith("### TV denoising") and md.count("\n| ") == 3
    models = [{"arch": "small_cnn", "global_trigger": True}, {"arch": "vgg_small", "global_trigger": False}]
    text = " ".join(caveats(models, ["input_detection"], None))
    assert "Models on small_cnn were measured with a global trigger" in text and "vgg_small" not in text
    assert not any("global" in c for c in caveats(models, ["neural_cleanse"], None))
