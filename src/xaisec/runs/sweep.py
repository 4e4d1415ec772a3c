"""Hyperparameter sweeps on Optuna: every trial is an ordinary run directory written by :func:`run_experiment`.

Noppel et al. ("Disguising Attacks with Explanation-Aware Backdoors", IEEE S&P 2023) chose every backdoor by a
grid search over the loss weight λ and the learning rate, scored each candidate on the first half of the test
set and reported the chosen one on the second half. A :class:`SweepSpec` holds the same pieces: a base config,
a ``grid`` (Optuna's ``GridSampler``) and/or ``search`` ranges (TPE), the ``objective`` (a metric key of the
runs, its direction taken from the metric record) and ``holdout`` (tune on ``eval.split=first_half``, then
re-evaluate the chosen trial's trained models on ``second_half``).

A sweep folder holds ``sweep.yaml`` (the spec), ``study.db`` (the Optuna study; any SQLAlchemy URL instead when
several machines share it), ``trials/<number>-<params>/`` (one run directory per trial), ``chosen-second_half/``
(with ``holdout``) and ``summary.json``. The clean reference model is trained once per distinct
``data``/``model``/``reference``/``seed`` and kept in ``<sweep folder's parent>/.reference_cache/`` for every
trial and later sweeps. A killed sweep continues from its storage: trials that were running when it died are
marked failed and re-queued with the same parameters, and the re-queued trial resumes the same run directory
(finished stages are loaded, not rerun). A trial that raises is recorded as failed with its error and the sweep
goes on.

The pieces: :mod:`xaisec.runs.sweep_spec` (the spec and its checks), :mod:`xaisec.runs.sweep_trials` (the study,
one trial, the reference cache, re-queueing) and :mod:`xaisec.runs.sweep_launch` (workers and launchers). This
module runs and summarises a whole sweep; their public names are importable from here too.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import merge
from ..errors import ConfigError
from ..io import atomic_write_json
from .rundir import RunDir
from .runner import RunResult, load_experiment, load_run, read_metrics, run_experiment, stored_config
from .sweep_launch import LAUNCHERS, check_launcher, launch, run_worker
from .sweep_spec import (SPEC_FILE, SweepSpec, check_spec, make_spec, nested, parse_distribution, parse_grid,
                         parse_search, range_start, split_sweep_section)
from .sweep_trials import (TRIALS, TrialRunner, cached_reference, finished_trials, import_optuna, objective_value,
                           open_storage, open_study, requeue_interrupted, trial_folder, trial_lock, waiting_trials)

SUMMARY_FILE, CHOSEN = "summary.json", "chosen-second_half"


@dataclass
class SweepResult:
    """Where the sweep is, its trial counts, the chosen trial and (with ``holdout``) its second-half run."""

    path: Path
    complete: int
    failed: int
    best: dict | None
    holdout: dict | None = None

    def lines(self) -> list[str]:
        out = [f"sweep: {self.path} ({self.complete} trials complete, {self.failed} failed)"]
        if self.best:
            params = ", ".join(f"{k}={v}" for k, v in self.best["params"].items())
            out.append(f"best: trial {self.best['number']} ({params}): {self.best['objective']} = "
                       f"{self.best['value']:.6g} [{self.best['split']}]")
        if self.holdout:
            out.append(f"reported on the second test half: {self.holdout['objective']} = {self.holdout['value']:.6g} "
                       f"({self.holdout['run_dir']})")
        return out


def check_sweep_dir(spec: SweepSpec, sweep_dir: Path) -> bool:
    """True if ``sweep_dir`` already holds this sweep (to continue), False if it is new or empty; another sweep
    or another kind of folder raises :class:`ConfigError`."""
    if (sweep_dir / SPEC_FILE).is_file():
        stored = SweepSpec.read(sweep_dir)
        if stored.identity() != spec.identity():
            changed = sorted(k for k, v in spec.identity().items() if stored.identity()[k] != v)
            raise ConfigError(f"{sweep_dir} holds another sweep (different {', '.join(changed)}); continue it with "
                              f"`xaisec sweep --resume {sweep_dir}` or give another --out")
        return True
    if sweep_dir.exists() and (not sweep_dir.is_dir() or any(sweep_dir.iterdir())):
        raise ConfigError(f"{sweep_dir} exists and is not a sweep folder; give another --out")
    return False


def prepare_sweep_dir(spec: SweepSpec, sweep_dir: Path) -> None:
    """Create the sweep folder with its ``sweep.yaml``, or check that an existing one runs the same sweep."""
    if check_sweep_dir(spec, sweep_dir):
        return
    try:
        (sweep_dir / TRIALS).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the sweep folder {sweep_dir}: {exc.strerror or exc}") from None
    spec.write(sweep_dir)


def run_sweep(spec: SweepSpec, sweep_dir: str | Path, *, launcher: str = "process", workers: int = 1) -> SweepResult:
    """Check everything, then run (or continue) the sweep in ``sweep_dir`` and summarise it (``summary.json``).

    Before any trial: the spec and every grid point, the launcher, the storage, the sweep folder, and (except on
    Slurm, whose jobs train it on their own nodes) the reference model of the first point, which loads the data
    and builds everything a trial builds."""
    sweep_dir = Path(sweep_dir)
    import_optuna()
    check_spec(spec)
    check_launcher(launcher, workers)
    load_experiment(spec.base)  # the base config is valid (its data options included) before anything else
    if spec.storage is not None:
        open_storage(spec.storage)  # unreachable databases fail here, before the folder exists
    check_sweep_dir(spec, sweep_dir)
    if launcher != "slurm":
        first = {key: values[0] for key, values in spec.grid.items()}
        first.update({key: range_start(raw) for key, raw in spec.search.items()})
        TrialRunner(spec, sweep_dir).config(first, "reference-check")
    prepare_sweep_dir(spec, sweep_dir)
    study = open_study(spec, sweep_dir)
    requeue_interrupted(study, sweep_dir)
    remaining = spec.n_trials - len(finished_trials(study))
    launch(sweep_dir, launcher, max(1, min(workers, remaining + waiting_trials(study))), spec.slurm)
    return summarise(sweep_dir)


def resume_sweep(sweep_dir: str | Path, *, launcher: str = "process", workers: int = 1) -> SweepResult:
    """Continue the sweep stored in ``sweep_dir`` (after a kill, or to add workers)."""
    return run_sweep(SweepSpec.read(sweep_dir), sweep_dir, launcher=launcher, workers=workers)


def summarise(sweep_dir: str | Path) -> SweepResult:
    """Pick the best complete trial, re-evaluate it on the second test half if the sweep holds one out, and
    write ``summary.json``."""
    from optuna.trial import TrialState

    sweep_dir = Path(sweep_dir)
    spec = SweepSpec.read(sweep_dir)
    study = open_study(spec, sweep_dir)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL and "error" in t.user_attrs]
    result = SweepResult(sweep_dir, len(complete), len(failed), None)
    if complete:
        best = min(complete, key=lambda t: (t.value, t.number))
        result.best = {"number": best.number, "params": best.params, "run_dir": f"{TRIALS}/{best.user_attrs['run_dir']}",
                       "objective": spec.objective, "value": best.user_attrs["value"],
                       "direction": best.user_attrs["direction"],
                       "split": "first_half" if spec.holdout else "all"}
        if spec.holdout:
            chosen = reevaluate(sweep_dir / result.best["run_dir"], {"eval": {"split": "second_half"}},
                                sweep_dir / CHOSEN)
            value, _ = objective_value(chosen.metrics, spec.objective, chosen.path)
            result.holdout = {"run_dir": CHOSEN, "objective": spec.objective, "value": value, "split": "second_half"}
    atomic_write_json(sweep_dir / SUMMARY_FILE, {
        "objective": spec.objective, "complete": result.complete, "failed": result.failed,
        "failures": {t.number: t.user_attrs["error"] for t in failed}, "best": result.best, "holdout": result.holdout})
    return result


def reevaluate(run_dir: str | Path, changes: dict, out: str | Path) -> RunResult:
    """Run the last stage of a finished run again with config ``changes`` (e.g. another ``eval.split``) into
    ``out``, reusing the run's other stage artifacts (no retraining); a finished ``out`` is read back."""
    src = RunDir(run_dir)
    kind, _ = load_run(src.path)
    data = merge(src.read_config(), {**changes, "name": Path(out).name})
    _, cfg = load_experiment(data)
    config = stored_config(cfg)
    dst = RunDir(out)
    if dst.finished and dst.read_config() == config:
        records, context = read_metrics(dst.path)
        return RunResult(dst.path, records, context)
    dst.claim(overwrite=True)
    dst.create(config, cfg.seed)
    for stage in kind.stages[:-1]:
        if (src / f"{stage.name}.safetensors").is_file():
            shutil.copy2(src / f"{stage.name}.safetensors", dst / f"{stage.name}.safetensors")
    if (src / "log.jsonl").is_file():
        shutil.copy2(src / "log.jsonl", dst / "log.jsonl")
    return run_experiment(cfg, dst.path, resume=True, progress=False)


__all__ = ["CHOSEN", "LAUNCHERS", "SPEC_FILE", "SUMMARY_FILE", "TRIALS", "SweepResult", "SweepSpec", "TrialRunner",
           "cached_reference", "check_launcher", "check_spec", "check_sweep_dir", "finished_trials", "import_optuna",
           "launch", "make_spec", "nested", "objective_value", "open_storage", "open_study", "parse_distribution",
           "parse_grid", "parse_search", "prepare_sweep_dir", "range_start", "reevaluate", "requeue_interrupted",
           "resume_sweep", "run_sweep", "run_worker", "split_sweep_section", "summarise", "trial_folder",
           "trial_lock", "waiting_trials"]
