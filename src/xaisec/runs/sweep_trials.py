"""One sweep trial = one run directory under ``<sweep>/trials``: the Optuna storage and study, the trial's
parameters and folder, its lock, the clean reference model trained once per sweep, the Optuna objective
(:class:`TrialRunner`) and the bookkeeping that re-queues trials whose worker died."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import merge
from ..errors import ConfigError
from ..io import atomic_write_bytes
from ..records import Metric
from .rundir import RunDir
from .runner import (RunContext, get_kind, load_experiment, read_metrics, run_environment, run_experiment,
                     stored_config)
from .sweep_spec import SweepSpec, nested, parse_distribution

log = logging.getLogger(__name__)

TRIALS = "trials"


# -- storage, study and trial folders --------------------------------------------------------------------------
def import_optuna():
    """The ``optuna`` module; missing, it raises ConfigError naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("xaisec sweep needs optuna: pip install 'xaisec[sweep]'") from None
    return optuna


def open_storage(url: str):
    """Optuna's RDB storage at ``url``; an unreachable database or a missing driver raises ConfigError."""
    optuna = import_optuna()
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None)
    except ImportError as exc:
        raise ConfigError(f"--storage {url!r}: its database driver is not installed ({exc}); install it (e.g. "
                          "psycopg2-binary for postgresql://, pymysql for mysql+pymysql://)") from None
    except ValueError as exc:
        raise ConfigError(f"--storage {url!r}: {exc}") from None
    except Exception as exc:  # sqlalchemy's OperationalError, ArgumentError...
        raise ConfigError(f"--storage {url!r} is not reachable: {type(exc).__name__}: {str(exc).splitlines()[0]}; "
                          "give an SQLAlchemy URL of a running database (e.g. postgresql://user@host/db) or "
                          "leave --storage out for SQLite in the sweep folder") from None


def open_study(spec: SweepSpec, sweep_dir: Path, worker: int = 0):
    """The sweep's Optuna study (created on first use). Optuna always minimises: a ``higher`` objective is stored
    negated (the trial's ``value`` and ``direction`` user attributes keep the metric as it is)."""
    optuna = import_optuna()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = int(spec.base.get("seed", 0)) + worker
    if spec.search:
        sampler = optuna.samplers.TPESampler(seed=seed)
    else:
        sampler = optuna.samplers.GridSampler(spec.grid, seed=int(spec.base.get("seed", 0)))
    return optuna.create_study(storage=open_storage(spec.storage_url(sweep_dir)), sampler=sampler,
                               study_name="xaisec-sweep", direction="minimize", load_if_exists=True)


def suggest(trial, spec: SweepSpec) -> dict[str, Any]:
    params = {key: trial.suggest_categorical(key, values) for key, values in spec.grid.items()}
    for key, raw in spec.search.items():
        kind, args = parse_distribution(key, raw)
        if kind == "choice":
            params[key] = trial.suggest_categorical(key, list(args))
        elif kind == "int":
            params[key] = trial.suggest_int(key, *args)
        else:
            params[key] = trial.suggest_float(key, *args, log=kind == "loguniform")
    return params


def trial_folder(number: int, params: dict[str, Any]) -> str:
    """``003-lam0.9-lr0.001``: the trial number and a short form of its parameters (a valid folder name)."""
    def short(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    text = "-".join(f"{key.rsplit('.', 1)[-1]}{short(v)}" for key, v in params.items())
    return f"{number:03d}-{re.sub(r'[^A-Za-z0-9._-]', '_', text)}"[:100]


@contextlib.contextmanager
def trial_lock(sweep_dir: Path, folder: str) -> Iterator[None]:
    """Held while a worker runs a trial; a free lock on a ``RUNNING`` trial means its worker died."""
    locks = Path(sweep_dir) / TRIALS / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{folder}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"trial {folder} is being run by another worker") from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _lock_free(sweep_dir: Path, folder: str | None) -> bool:
    if folder is None:
        return True
    try:
        with trial_lock(sweep_dir, folder):
            return True
    except ConfigError:
        return False


# -- the reference model, once per sweep -----------------------------------------------------------------------
def reference_key(config: dict) -> str:
    """Hash of what the clean reference model depends on: ``data``, ``model``, ``reference``, ``seed`` (and the
    device and denormal policy, which change the last bits)."""
    part = {k: config.get(k) for k in ("experiment", "data", "model", "reference", "seed", "device", "flush_denormals")}
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_reference(cfg: Any, cache_dir: Path) -> Path | None:
    """Weights of ``cfg``'s reference model in ``cache_dir/<hash>.safetensors``, trained on first use exactly as a
    run's ``reference`` stage trains it (same seeding; the caller's RNG state is left unchanged). None when the
    kind has no ``reference`` stage or the config already names ``reference.weights``."""
    from safetensors.torch import save

    kind = get_kind(cfg.experiment)
    stage = next((s for s in kind.stages if s.name == "reference"), None)
    if stage is None or getattr(getattr(cfg, "reference", None), "weights", "") is not None:
        return None
    config = stored_config(cfg)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{reference_key(config)}.safetensors"
    fd = os.open(cache_dir / f"{path.stem}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a second worker waits for the first one's training
        if path.is_file():
            return path
        log.info("reference model: training it once for the sweep (%s)", path.name)
        scratch = cache_dir / f"{path.stem}.work"
        shutil.rmtree(scratch, ignore_errors=True)
        with run_environment(cfg):
            inputs = kind.prepare(cfg)
            ctx = RunContext(cfg, inputs, RunDir(scratch), progress=False, stage=stage.name)
            torch.manual_seed(cfg.seed)
            result = stage.run(ctx)
        atomic_write_bytes(path, save({k: v.contiguous() for k, v in result.weights.items()},
                                      metadata={"config": json.dumps(config)}))
        shutil.rmtree(scratch, ignore_errors=True)
        return path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# -- trials ----------------------------------------------------------------------------------------------------
class TrialRunner:
    """The Optuna objective: one trial = one run directory under ``<sweep>/trials``."""

    def __init__(self, spec: SweepSpec, sweep_dir: Path):
        self.spec, self.sweep_dir = spec, Path(sweep_dir)

    def config(self, params: dict[str, Any], folder: str) -> Any:
        """The trial's validated config: base + params, its own name, one thread unless the base sets
        ``threads``, the cached reference model, and the first test half with ``holdout``."""
        data = merge(self.spec.base, nested(params))
        data["name"] = folder
        data.setdefault("threads", 1)
        if self.spec.holdout:
            data = merge(data, {"eval": {"split": "first_half"}})
        _, cfg = load_experiment(data)
        weights = cached_reference(cfg, self.sweep_dir.parent / ".reference_cache")
        if weights is not None:
            # the cached model was trained from reference.init already: the trials load it as it is
            _, cfg = load_experiment(merge(data, {"reference": {"weights": str(weights), "init": None}}))
        return cfg

    def __call__(self, trial) -> float:
        import optuna

        params = suggest(trial, self.spec)
        if self.spec.grid and not self.spec.search and _duplicate(trial, params):
            trial.study.stop()
            raise optuna.TrialPruned("this grid point was already run by another worker")
        folder = trial.user_attrs.get("run_dir") or trial_folder(trial.number, params)
        run_dir = self.sweep_dir / TRIALS / folder
        try:
            trial.set_user_attr("run_dir", folder)
            with trial_lock(self.sweep_dir, folder):
                cfg = self.config(params, folder)
                rd = RunDir(run_dir)
                state = rd.state() if rd.holds_run() else None
                if state == "finished":  # finished before its worker died: nothing to run again
                    metrics, _ = read_metrics(run_dir)
                else:
                    if state is not None:
                        log.info("trial %d: resuming %s (%s)", trial.number, run_dir, state)
                    with _tracking(run_dir if self.spec.track else None):
                        metrics = run_experiment(cfg, run_dir, resume=state is not None, progress=False).metrics
            value, direction = objective_value(metrics, self.spec.objective, run_dir)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            log.warning("trial %d (%s) failed: %s: %s", trial.number, folder, type(exc).__name__, exc)
            raise
        trial.set_user_attr("value", value)
        trial.set_user_attr("direction", direction)
        log.info("trial %d (%s): %s = %.6g", trial.number, folder, self.spec.objective, value)
        return value if direction == "lower" else -value


def objective_value(metrics: dict[str, Metric], key: str, run_dir: Path) -> tuple[float, str]:
    """``(value, direction)`` of the objective metric; a missing, NaN or direction-less metric raises."""
    if key not in metrics:
        raise ConfigError(f"objective {key!r} is not a metric of {run_dir}; its metrics: "
                          f"{', '.join(sorted(metrics)[:30])}")
    m = metrics[key]
    if m.direction == "none":
        raise ConfigError(f"objective {key!r} has no direction (informative only); choose a metric whose record "
                          "says higher or lower")
    if m.value is None or not math.isfinite(m.value):
        raise ValueError(f"objective {key} is not a finite number in {run_dir}")
    return float(m.value), m.direction


def _duplicate(trial, params: dict[str, Any]) -> bool:
    from optuna.trial import TrialState

    if "resumes" in trial.user_attrs:  # a re-queued trial resumes its own point
        return False
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if other.number != trial.number and other.params == params:
            return True
    return False


@contextlib.contextmanager
def _tracking(run_dir: Path | None) -> Iterator[None]:
    if run_dir is None:
        yield
        return
    from .tracking import TensorBoardTracker, track_epochs

    with TensorBoardTracker(run_dir / "tensorboard") as tracker, track_epochs(tracker):
        yield


# -- bookkeeping across kills -----------------------------------------------------------------------------------
def finished_trials(study) -> list:
    """Trials that count towards the sweep's size: complete ones and ones that failed with an error (not
    interrupted ones, which are re-queued)."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "error" in t.user_attrs)]


def requeue_interrupted(study, sweep_dir: Path) -> list[int]:
    """Mark trials whose worker died as failed and queue each one's parameters again; the new trial resumes the
    same run directory. Returns the re-queued trial numbers. Called by the coordinating process only."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs.get("resumes") for t in trials}
    requeued = []
    for t in trials:
        if t.number in taken:
            continue
        folder = t.user_attrs.get("run_dir")
        if t.state == TrialState.RUNNING:
            if not _lock_free(sweep_dir, folder):
                continue  # a live worker holds it
            study.tell(t.number, state=TrialState.FAIL)
        elif not (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")):
            continue
        if t.params:
            attrs = {"resumes": t.number, **({"run_dir": folder} if folder else {})}
            study.enqueue_trial(t.params, user_attrs=attrs)
            requeued.append(t.number)
            log.info("trial %d was interrupted: queued again (resumes %s)", t.number, folder)
    return requeued


def waiting_trials(study) -> int:
    """How many trials are queued (re-queued ones included) and not started yet."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


__all__ = ["TRIALS", "TrialRunner", "cached_reference", "finished_trials", "import_optuna", "objective_value",
           "open_storage", "open_study", "reference_key", "requeue_interrupted", "suggest", "trial_folder", "trial_lock",
           "waiting_trials"]
