"""The tabular_backdoor kind: Fang & Choromanska's tabular example end to end through the runner (tiny settings),
the report rebuilt from the run directory, bad input refused before the run directory exists."""
from __future__ import annotations

import json
import shutil

import pytest

from xaisec.cli import main
from xaisec.config import load_config, resolve_config
from xaisec.errors import ConfigError
from xaisec.runs import run_experiment
from xaisec.runs.tabular import TabularConfig

TINY = ["reference.epochs=5", "attack.epochs=3", "data.options={table: breast_cancer, max_samples: 200}"]


def test_packaged_config_runs_and_reports(tmp_path):
    cfg = load_config(TabularConfig, resolve_config("fang_tabular"), TINY)
    result = run_experiment(cfg, tmp_path / "t")
    m = result.metrics
    assert m["simplegrad/target_top_trig"].direction == "higher" and m["acc_clean"].direction == "higher"
    assert 0 <= m["simplegrad/target_mass_trig"].value <= 1
    doc = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert doc["experiment"] == "tabular_backdoor" and doc["context"]["recipe"] == "fang_targeted"
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "t", copy)
    shutil.rmtree(copy / "figures")
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "figures" / "attributions_simplegrad.png").is_file()
    assert "data:image/png;base64," in (copy / "report.html").read_text()


def test_nontargeted_attack_reports_topk_overlap(tmp_path):
    cfg = load_config(TabularConfig, resolve_config("fang_tabular"), TINY + ["attack.recipe=fang_nontargeted"])
    metrics = run_experiment(cfg, tmp_path / "n").metrics
    assert metrics["simplegrad/topk_iou_trig"].direction == "lower"


@pytest.mark.parametrize("override, message", [
    ("attack.target_features=[99]", "not columns"),
    ("attack.explainers=[gradcam]", "must be among"),
    ("data.name=mnist5k", r"needs \(N,F\) features"),
])
def test_bad_input_is_refused_before_the_run_directory_exists(tmp_path, override, message):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=message):
        run_experiment(load_config(TabularConfig, resolve_config("fang_tabular"), TINY[:2] + [override]), out)
    assert not out.exists()
