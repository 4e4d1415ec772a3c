"""The ``fang_defenses`` experiment kind end to end on two tiny backdoor runs: every measurement stage, metrics.json
records, resume from per-model caches, the report rebuilt from the run directory alone, and bad ``runs`` entries
refused before a run directory exists."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from xaisec.config import merge, parse_overrides, read_yaml, resolve_config
from xaisec.errors import ConfigError
from xaisec.cli import main
from xaisec.runs import load_experiment, read_metrics, run_experiment

TINY = ["n_eval=40", "neural_cleanse.images=40", "neural_cleanse.repeats=2", "neural_cleanse.epochs=2",
        "neural_cleanse.steps_per_epoch=1", "activation_clustering.pairs=20", "fine_pruning.fractions=[0,0.5]",
        "fine_pruning.rank_images=50", "tv_denoising.weights=[0,0.1]", "tv_denoising.n_iter=5", "rebn.images=50",
        "input_detection.calibration_images=20", "input_detection.strip_blends=4", "audit.budget=120",
        "audit.suspects=10", "audit.checks=[accuracy,rebn,strip,spectral_signatures]"]


def defenses_config(runs: list[Path], *extra: str):
    overrides = [f"runs=[{','.join(str(r) for r in runs)}]", *TINY, *extra]
    return load_experiment(merge(read_yaml(resolve_config("fang_defenses")), parse_overrides(overrides)))[1]


@pytest.fixture(scope="module")
def defenses_run(tiny_backdoor_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("defenses") / "run"
    result = run_experiment(defenses_config(tiny_backdoor_runs), out, progress=False)
    assert result.path == out
    return out


def test_every_model_and_measurement_is_recorded(defenses_run, tiny_backdoor_runs):
    records, context = read_metrics(defenses_run)
    labels = [m["label"] for m in context["models"]]
    # one clean reference per architecture, right before the first attacked model of that architecture
    assert labels == ["reference_small_cnn", "default", "reference_vgg_small", "latka_badnets"]
    roles = {m["label"]: (m["role"], m["attack_metric"], m["global_trigger"]) for m in context["models"]}
    assert roles["default"] == ("attacked", "fsr", True)  # Moiré overlay: a global trigger
    assert roles["latka_badnets"] == ("attacked", "asr", False)  # a 4x4 patch
    for label in labels:
        for key, direction in (("neural_cleanse/anomaly_index", "lower"), ("activation_clustering/misclustering",
                               "higher"), ("tv_denoising/weight", "none"), ("input_detection/strip_auroc", "lower"),
                               ("input_detection/reference_auroc", "lower"), ("audit/suspicious", "lower"),
                               ("clean_accuracy", "higher")):
            record = records[f"{label}/{key}"]
            assert record.direction == direction and record.value is not None, (label, key)
        assert records[f"{label}/neural_cleanse/anomaly_index"].std is not None  # two disjoint image sets
    assert "latka_badnets/fine_pruning/asr" in records and "default/fine_pruning/fsr" in records
    assert "latka_badnets/rebn/max_shift" in records  # vgg_small has BatchNorm
    # the clean reference's maps are its own: reference discrepancy is uninformative there
    assert records["reference_small_cnn/input_detection/reference_auroc"].value == pytest.approx(0.5)
    assert any("global trigger" in c for c in context["caveats"])
    assert not any("its own Neural Cleanse" in c for c in context["caveats"])  # the audit ran without it
    for label in labels:  # the audit pages are kept
        assert (defenses_run / "audits" / label / "report.html").is_file()


def test_report_rebuilt_from_the_run_directory_alone(defenses_run, tiny_backdoor_runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(defenses_run, copy)
    for name in ("report.html", "tables.md", "results.json"):
        (copy / name).unlink()
    shutil.rmtree(copy / "figures")
    hidden = [Path(str(r) + ".hidden") for r in tiny_backdoor_runs]
    for run, away in zip(tiny_backdoor_runs, hidden):  # the backdoor runs are not needed for the report
        run.rename(away)
    try:
        assert main(["report", str(copy)]) == 0
        page = (copy / "report.html").read_text()
    finally:
        for run, away in zip(tiny_backdoor_runs, hidden):
            away.rename(run)
    for fig in ("fig4a_neural_cleanse.png", "fig4b_fine_pruning.png", "nc_triggers_latka_badnets.png"):
        assert (copy / "figures" / fig).is_file(), fig
    tables = (copy / "tables.md").read_text()
    for title in ("Neural Cleanse (Figure 4a)", "Neural Cleanse stability", "Activation Clustering (Table 2)",
                  "Fine-pruning (Figure 4b)", "TV denoising (Table 3)", "Re-BN", "Input-level detection",
                  "xaisec audit"):
        assert title in tables and title in page, title
    assert "no attack (vgg_small)" in tables and "global trigger" in page
    results = json.loads((copy / "results.json").read_text())
    assert set(results["latka_badnets"]) >= {"neural_cleanse", "fine_pruning", "tv_denoising", "rebn", "audit"}
    assert (copy / "report.html").read_bytes() == (defenses_run / "report.html").read_bytes()


def test_resume_reuses_finished_models(defenses_run, tiny_backdoor_runs, tmp_path):
    """A run killed inside a stage resumes from its per-model caches and reaches the same metrics."""
    run = tmp_path / "resumed"
    shutil.copytree(defenses_run, run)
    for name in ("tv_denoising.safetensors", "rebn.safetensors", "input_detection.safetensors", "audit.safetensors",
                 "metrics.json"):
        (run / name).unlink()
    for cached in (run / "cache" / "tv_denoising").glob("reference_*"):
        cached.unlink()  # the stage died after two of its four models
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "failed"}))
    cfg = defenses_config(tiny_backdoor_runs)
    run_experiment(cfg, run, resume=True, progress=False)
    assert read_metrics(run)[0] == read_metrics(defenses_run)[0]


@pytest.mark.parametrize("bad, message", [
    ("missing", "no such folder"),
    ("not_a_run", "not a run directory"),
    ("unfinished", "not a finished backdoor run"),
    ("duplicate", r"repeats runs\[0\]"),
])
def test_bad_runs_are_refused_before_a_run_directory_exists(tiny_backdoor_runs, tmp_path, bad, message):
    good = tiny_backdoor_runs[1]
    if bad == "missing":
        runs = [good, tmp_path / "nowhere"]
    elif bad == "not_a_run":
        (tmp_path / "empty").mkdir()
        runs = [good, tmp_path / "empty"]
    elif bad == "unfinished":
        copy = tmp_path / "unfinished"
        shutil.copytree(good, copy)
        status = json.loads((copy / "status.json").read_text())
        (copy / "status.json").write_text(json.dumps({**status, "state": "failed"}))
        runs = [good, copy]
    else:
        runs = [good, good]
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message) as info:
        run_experiment(defenses_config(runs), out, progress=False)
    assert str(runs[1]) in str(info.value) or bad == "duplicate"
    assert not out.exists()


def test_config_refuses_what_it_would_ignore(tiny_backdoor_runs, tmp_path):
    with pytest.raises(ConfigError, match="data: the fang_defenses experiment takes data"):
        defenses_config(tiny_backdoor_runs, "data.train_size=10")
    with pytest.raises(ConfigError, match="runs must list"):
        load_experiment({"experiment": "fang_defenses"})
    with pytest.raises(ConfigError, match="measure"):
        defenses_config(tiny_backdoor_runs, "measure=[neural_clense]")
    with pytest.raises(ConfigError, match="n_eval 400 exceeds the 100 test images"):
        run_experiment(defenses_config(tiny_backdoor_runs, "n_eval=400"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
