"""``xaisec sweep``: a 2x1 grid end to end with Noppel et al.'s holdout, the reference model trained once, a
killed sweep resumed without losing or repeating a trial, failing trials recorded, and bad input refused before
any trial starts."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from xaisec.cli import main
from xaisec.config import merge, parse_yaml
from xaisec.errors import ConfigError
from xaisec.runs import sweep as S
from xaisec.runs.backdoor import BackdoorExperiment
from xaisec.runs.rundir import RunDir

TINY = """\
name: tiny
seed: 1
data: {name: mnist5k, train_size: 200, test_size: 100}
model: {arch: small_cnn, options: {width: 8}}
reference: {epochs: 1, batch_size: 50}
trigger: {name: rectangle, options: {position: top_left, colour: 1.0}}
attack: {recipe: noppel_ep, epochs: 1, batch_size: 50}
stopping: {monitor_size: 50}
eval: {samples: 2}
"""
GRID = ["--grid", "attack.lam=0.85,0.9", "--holdout"]


def tiny_spec(**changes) -> S.SweepSpec:
    spec = S.make_spec(parse_yaml(TINY, "tiny"), grid={"attack.lam": [0.85, 0.9]}, holdout=True)
    return replace(spec, **changes)


class StageCounter:
    """Records ``(stage, attack.lam)`` of every backdoor stage run (a reference stage only when it trains);
    ``fail`` makes a stage raise (once, or always)."""

    def __init__(self):
        self.calls: list[tuple[str, float]] = []
        self.failures: dict[str, tuple] = {}

    def fail(self, stage: str, when, exc: BaseException, once: bool = True) -> None:
        self.failures[stage] = (when, exc, once)

    def count(self, stage: str, lam: float | None = None) -> int:
        return sum(1 for s, v in self.calls if s == stage and lam in (None, v))

    def wrap(self, stage):
        def run(ctx):
            if not (stage.name == "reference" and ctx.cfg.reference.weights is not None):  # loading is not training
                self.calls.append((stage.name, ctx.cfg.attack.lam))
            when, exc, once = self.failures.get(stage.name, (None, None, False))
            if when is not None and when(ctx.cfg):
                if once:
                    del self.failures[stage.name]
                raise exc
            return stage.run(ctx)
        return replace(stage, run=run)


@pytest.fixture
def stages(monkeypatch) -> StageCounter:
    counter = StageCounter()
    monkeypatch.setattr(BackdoorExperiment, "stages", tuple(counter.wrap(s) for s in BackdoorExperiment.stages))
    return counter


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweeps")
    (root / "tiny.yaml").write_text(TINY)
    assert main(["sweep", str(root / "tiny.yaml"), *GRID, "--out", str(root / "grid")]) == 0
    return root / "grid"


def test_grid_sweep_runs_every_point_and_reports_the_chosen_one_on_the_second_half(grid_sweep):
    summary = json.loads((grid_sweep / "summary.json").read_text())
    assert summary["complete"] == 2 and summary["failed"] == 0
    trials = sorted(p.name for p in (grid_sweep / "trials").iterdir() if not p.name.startswith("."))
    assert trials == ["000-lam0.85", "001-lam0.9"] or sorted(t[4:] for t in trials) == ["lam0.85", "lam0.9"]
    values = {}
    for name in trials:
        rd = RunDir(grid_sweep / "trials" / name)
        assert rd.finished and (rd / "report.html").is_file()
        cfg = rd.read_config()
        assert cfg["threads"] == 1 and cfg["eval"]["split"] == "first_half"
        values[name] = json.loads((rd / "metrics.json").read_text())["metrics"]["attacked/noppel_score"]["value"]
    best = summary["best"]
    assert best["value"] == min(values.values()) and best["split"] == "first_half"
    chosen = RunDir(grid_sweep / "chosen-second_half")
    assert chosen.read_config()["eval"]["split"] == "second_half" and chosen.finished
    doc = json.loads((chosen / "metrics.json").read_text())
    assert doc["context"]["eval_split"] == "second_half" and doc["context"]["eval_images"] == 50
    assert summary["holdout"]["value"] == doc["metrics"]["attacked/noppel_score"]["value"]
    # the chosen trial's trained model is re-evaluated, not retrained
    trained = load_file(str(grid_sweep / best["run_dir"] / "attacked.safetensors"))
    assert all(torch.equal(v, load_file(str(chosen / "attacked.safetensors"))[k]) for k, v in trained.items())


def test_reference_is_trained_once_and_shared(grid_sweep):
    cache = grid_sweep.parent / ".reference_cache"
    assert len(list(cache.glob("*.safetensors"))) == 1
    weights = {RunDir(p).read_config()["reference"]["weights"] for p in (grid_sweep / "trials").glob("0*")}
    assert weights == {str(next(cache.glob("*.safetensors")))}


def test_killed_sweep_resumes_without_losing_or_repeating_a_trial(grid_sweep, stages):
    out = grid_sweep.parent / "killed"
    stages.fail("evaluation", lambda cfg: cfg.attack.lam == 0.9, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        S.run_sweep(tiny_spec(track=True), out)
    assert stages.count("reference") == 0  # the first sweep's cached reference model is reused
    interrupted = [p for p in (out / "trials").glob("0*") if RunDir(p).state() == "interrupted"]
    assert len(interrupted) == 1 and (interrupted[0] / "attacked.safetensors").is_file()
    trained_before = stages.count("attacked", 0.9)

    result = S.resume_sweep(out)
    assert stages.count("attacked", 0.9) == trained_before == 1  # loaded on resume, not trained again
    assert stages.count("attacked") == 2 and stages.count("reference") == 0
    study = S.open_study(S.SweepSpec.read(out), out)
    assert len(S.finished_trials(study)) == 2 and len(study.trials) == 3
    assert all(list((p / "tensorboard").glob("events.*")) for p in (out / "trials").glob("0*"))  # --track
    retry = next(t for t in study.trials if "resumes" in t.user_attrs)
    assert retry.user_attrs["run_dir"] == interrupted[0].name and retry.params == {"attack.lam": 0.9}
    first = S.open_study(S.SweepSpec.read(grid_sweep), grid_sweep)
    scores = lambda st: sorted((t.params["attack.lam"], t.user_attrs["value"]) for t in S.finished_trials(st))  # noqa: E731
    assert scores(study) == scores(first)
    first_best = json.loads((grid_sweep / "summary.json").read_text())["best"]
    assert {**result.best, "number": None} == {**first_best, "number": None}  # same point, same run folder name
    assert result.holdout == json.loads((grid_sweep / "summary.json").read_text())["holdout"]
    evaluations = stages.count("evaluation")
    assert S.resume_sweep(out).complete == 2  # nothing left to run, nothing runs again
    assert len(S.open_study(S.SweepSpec.read(out), out).trials) == 3 and stages.count("evaluation") == evaluations


def test_a_trial_whose_worker_died_is_requeued(tmp_path):
    spec = tiny_spec(storage=None)
    S.prepare_sweep_dir(spec, tmp_path / "s")
    study = S.open_study(spec, tmp_path / "s")
    trial = study.ask()
    trial.suggest_categorical("attack.lam", [0.85, 0.9])
    trial.set_user_attr("run_dir", "000-lam0.85")
    with S.trial_lock(tmp_path / "s", "000-lam0.85"):  # its worker is alive: left alone
        assert S.requeue_interrupted(study, tmp_path / "s") == []
    assert S.requeue_interrupted(study, tmp_path / "s") == [trial.number]
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    assert states == ["FAIL", "WAITING"]
    assert study.trials[1].user_attrs == {"resumes": 0, "run_dir": "000-lam0.85"}
    assert S.requeue_interrupted(study, tmp_path / "s") == []  # queued once


def test_failing_trials_are_recorded_and_the_sweep_goes_on(grid_sweep, stages):
    stages.fail("attacked", lambda cfg: True, RuntimeError("boom"), once=False)
    rng, threads = torch.random.get_rng_state(), torch.get_num_threads()
    result = S.run_sweep(tiny_spec(holdout=False), grid_sweep.parent / "failing")
    assert torch.equal(torch.random.get_rng_state(), rng) and torch.get_num_threads() == threads  # no side effects
    assert result.complete == 0 and result.failed == 2 and result.best is None
    summary = json.loads((grid_sweep.parent / "failing" / "summary.json").read_text())
    assert all("RuntimeError: boom" in e for e in summary["failures"].values())


def test_submitit_local_launcher_runs_workers_as_jobs(grid_sweep, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1] / "src"))  # the job imports this xaisec
    before = len(S.open_study(S.SweepSpec.read(grid_sweep), grid_sweep).trials)
    S.launch(grid_sweep, "submitit-local", 1)  # a finished sweep: the job opens the study and has nothing to do
    assert len(S.open_study(S.SweepSpec.read(grid_sweep), grid_sweep).trials) == before
    assert list((grid_sweep / "jobs").glob("*_result.pkl"))


@pytest.mark.parametrize("args, match", [
    (["--grid", "attack.lamda=0.8,0.9"], "lamda"),
    (["--grid", "attack.lam=0.8,high"], "attack.lam"),
    (["--grid", "attack.lam=0.8,2.0"], "attack.lam must be in"),
    (["--grid", "attack.lam=0.8,0.8"], "repeats"),
    (["--search", "attack.lr=loguniform:0:1", "--trials", "2"], "LO > 0"),
    (["--search", "attack.lr=normal:1:2", "--trials", "2"], "loguniform"),
    (["--search", "attack.lr=loguniform:1e-4:1e-3"], "--trials"),
    ([], "needs --grid"),
    (["--grid", "attack.lam=0.8", "--storage", "sqlite:////nonexistent-xaisec-dir/a/b.db"], "not reachable"),
    (["--grid", "attack.lam=0.8", "--storage", "nosuchdb://x"], "--storage"),
])
def test_bad_input_is_refused_before_any_trial(tmp_path, capsys, args, match):
    (tmp_path / "tiny.yaml").write_text(TINY)
    assert main(["sweep", str(tmp_path / "tiny.yaml"), *args, "--out", str(tmp_path / "s")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_slurm_needs_submitit_and_sbatch(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny.yaml").write_text(TINY)
    argv = ["sweep", str(tmp_path / "tiny.yaml"), "--grid", "attack.lam=0.8", "--launcher", "slurm",
            "--out", str(tmp_path / "s")]
    monkeypatch.setattr(S.shutil, "which", lambda name: None)
    assert main(argv) == 2 and "sbatch" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "submitit", None)
    assert main(argv) == 2 and "needs submitit" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_sweep_section_in_the_config_and_a_changed_sweep_is_refused(tmp_path, capsys):
    data = merge(parse_yaml(TINY, "tiny"), {"sweep": {"grid": {"attack.lam": [0.85]}, "objective": "attacked/asr"}})
    spec = S.make_spec(data, trials=1)
    assert spec.grid == {"attack.lam": [0.85]} and spec.objective == "attacked/asr" and "sweep" not in spec.base
    with pytest.raises(ConfigError, match="unknown keys"):
        S.make_spec(merge(data, {"sweep": {"gird": {}}}))
    S.prepare_sweep_dir(spec, tmp_path / "s")
    with pytest.raises(ConfigError, match="another sweep"):
        S.prepare_sweep_dir(replace(spec, grid={"attack.lam": [0.9]}), tmp_path / "s")
    assert yaml.safe_load((tmp_path / "s" / "sweep.yaml").read_text())["objective"] == "attacked/asr"


def test_parsing_grid_and_search_values():
    assert S.parse_grid(["attack.explainers=[gradcam],[vbp]", "seed=1,2"]) == {
        "attack.explainers": [["gradcam"], ["vbp"]], "seed": [1, 2]}
    assert S.parse_distribution("k", "int:1:5") == ("int", (1, 5))
    assert S.parse_distribution("k", "choice:mse,dssim") == ("choice", ("mse", "dssim"))
    assert S.trial_folder(7, {"attack.lr": 0.00025, "attack.distance": "mse"}) == "007-lr0.00025-distancemse"


def test_collect_on_the_sweep(grid_sweep, tmp_path):
    assert main(["collect", str(grid_sweep), "--csv", str(tmp_path / "t.csv"), "--md", str(tmp_path / "t.md"),
                 "--figure", str(tmp_path / "t.png"), "--metrics", "attacked/noppel_score", "attacked/top1_clean"]) == 0
    md = (tmp_path / "t.md").read_text()
    assert "attack.lam" in md and "eval.split" in md and "chosen-second_half" in md and "attacked/noppel_score ↓" in md
    assert (tmp_path / "t.png").is_file()


def test_packaged_grids_are_valid_and_the_cluster_grid_needs_its_data(tmp_path, capsys):
    from xaisec.config import read_yaml, resolve_config

    spec = S.make_spec(read_yaml(resolve_config("noppel_grid")))
    S.check_spec(spec)
    assert spec.n_trials == 9 and spec.holdout and spec.objective == "attacked/noppel_score"
    gtsrb = S.make_spec(read_yaml(resolve_config("noppel_grid_gtsrb")))
    assert gtsrb.grid["attack.lam"] == [0.85, 0.9, 0.912, 0.925, 0.938, 0.95] and gtsrb.n_trials == 36
    assert main(["sweep", "noppel_grid_gtsrb", "--out", str(tmp_path / "s")]) == 2
    assert "data.options.root" in capsys.readouterr().err and not (tmp_path / "s").exists()
