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
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml

from ..config import dump_config, merge, parse_yaml
from ..errors import ConfigError, XaisecError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..records import Metric
from .. import numerics
from .runner import RunContext, RunResult, _threads, get_kind, load_experiment, load_run, read_metrics, run_experiment
from .rundir import RunDir

log = logging.getLogger(__name__)

SPEC_FILE, SUMMARY_FILE, TRIALS, CHOSEN = "sweep.yaml", "summary.json", "trials", "chosen-second_half"
LAUNCHERS = ("process", "submitit-local", "slurm")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
#: grids larger than this are checked value by value instead of point by point
_CHECK_ALL_POINTS = 512


# -- the spec --------------------------------------------------------------------------------------------------
@dataclass
class SweepSpec:
    """What a sweep explores. ``base``: the run config (a mapping, validated with its kind's schema); ``grid``:
    dotted key -> values; ``search``: dotted key -> ``uniform:LO:HI`` / ``loguniform:LO:HI`` / ``int:LO:HI`` /
    ``choice:A,B,...``; ``trials``: how many (default: the grid's size); ``objective``: the metric key optimised
    in its record's direction; ``holdout``: Noppel et al.'s selection on the test halves; ``storage``: an
    SQLAlchemy URL (default: SQLite in the sweep folder); ``track``: TensorBoard logs per trial; ``slurm``:
    submitit executor parameters for ``--launcher slurm``."""

    base: dict
    grid: dict[str, list] = field(default_factory=dict)
    search: dict[str, str] = field(default_factory=dict)
    trials: int | None = None
    objective: str = "attacked/noppel_score"
    holdout: bool = False
    storage: str | None = None
    track: bool = False
    slurm: dict = field(default_factory=dict)

    #: keys of the ``sweep:`` section of a config file
    KEYS = ("grid", "search", "trials", "objective", "holdout", "storage", "track", "slurm")

    @property
    def n_trials(self) -> int:
        if self.trials is not None:
            return self.trials
        return math.prod(len(v) for v in self.grid.values())

    def identity(self) -> dict:
        """What must not change when a sweep is continued."""
        return {k: v for k, v in asdict(self).items() if k not in ("slurm", "track")}

    def storage_url(self, sweep_dir: Path) -> str:
        return self.storage or f"sqlite:///{Path(sweep_dir).resolve() / 'study.db'}"

    def write(self, sweep_dir: Path) -> None:
        atomic_write_text(Path(sweep_dir) / SPEC_FILE, yaml.safe_dump(asdict(self), sort_keys=False))

    @classmethod
    def read(cls, sweep_dir: str | Path) -> "SweepSpec":
        path = Path(sweep_dir) / SPEC_FILE
        if not path.is_file():
            raise ConfigError(f"{sweep_dir} is not a sweep folder (no {SPEC_FILE}); give the folder `xaisec sweep` "
                              "printed")
        data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
        if not isinstance(data, dict) or not isinstance(data.get("base"), dict):
            raise ConfigError(f"{path} is damaged: no `base:` config mapping")
        unknown = sorted(set(data) - {"base", *cls.KEYS})
        if unknown:
            raise ConfigError(f"{path} has unknown keys {unknown}")
        return cls(**data)


def split_sweep_section(data: dict) -> tuple[dict, dict]:
    """``(run config, sweep section)``: the ``sweep:`` mapping of a config file is taken out before the run
    config is validated with its kind's schema."""
    data = dict(data)
    section = data.pop("sweep", None) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"sweep: must be a mapping of {', '.join(SweepSpec.KEYS)}, got {section!r}")
    unknown = sorted(set(section) - set(SweepSpec.KEYS))
    if unknown:
        raise ConfigError(f"sweep: unknown keys {unknown}; accepted: {', '.join(SweepSpec.KEYS)}")
    return data, section


def _split_top_level(text: str) -> list[str]:
    """Split ``a,[b,c],d`` at commas outside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def _key_value(item: str, flag: str) -> tuple[str, str]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")) or not raw.strip():
        raise ConfigError(f"{flag} {item!r} must look like key=VALUES (e.g. {flag} attack.lam=0.85,0.9)")
    return key, raw.strip()


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["attack.lam=0.85,0.9"]`` -> ``{"attack.lam": [0.85, 0.9]}`` (each value parsed as YAML)."""
    grid: dict[str, list] = {}
    for item in items:
        key, raw = _key_value(item, "--grid")
        grid[key] = [parse_yaml(v.strip(), f"--grid {item!r}") for v in _split_top_level(raw)]
    return grid


def parse_search(items: list[str]) -> dict[str, str]:
    """``["attack.lr=loguniform:2e-4:2.5e-3"]`` -> ``{"attack.lr": "loguniform:2e-4:2.5e-3"}`` (checked)."""
    search = {}
    for item in items:
        key, raw = _key_value(item, "--search")
        parse_distribution(key, raw)
        search[key] = raw
    return search


def parse_distribution(key: str, spec: Any) -> tuple[str, tuple]:
    """``(kind, arguments)`` of a search range: ``("loguniform", (lo, hi))``, ``("choice", (values...))``."""
    kind, _, rest = str(spec).partition(":")
    if kind not in DISTRIBUTIONS or not rest:
        raise ConfigError(f"search range of {key} must be one of {', '.join(f'{d}:...' for d in DISTRIBUTIONS)} "
                          f"(e.g. loguniform:2e-4:2.5e-3 or choice:mse,dssim), got {spec!r}")
    if kind == "choice":
        values = tuple(parse_yaml(v.strip(), f"search {key}") for v in _split_top_level(rest))
        _check_scalars(key, values)
        return kind, values
    bounds = rest.split(":")
    try:
        lo, hi = (int(b) if kind == "int" else float(b) for b in bounds)
    except ValueError:
        raise ConfigError(f"search range of {key}: {kind} needs two {'integers' if kind == 'int' else 'numbers'} "
                          f"LO:HI, got {rest!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi) or (kind == "loguniform" and lo <= 0):
        raise ConfigError(f"search range of {key}: need finite LO < HI{' and LO > 0' if kind == 'loguniform' else ''}"
                          f", got {lo}:{hi}")
    return kind, (lo, hi)


def _check_scalars(key: str, values: Any) -> None:
    if not values:
        raise ConfigError(f"sweep key {key} needs at least one value")
    for v in values:
        if not (v is None or isinstance(v, (str, int, float, bool))) or (isinstance(v, float) and not math.isfinite(v)):
            raise ConfigError(f"sweep key {key}: value {v!r} is not a finite number, string, boolean or null "
                              "(Optuna stores only those)")


def nested(params: dict[str, Any]) -> dict:
    """``{"attack.lam": 0.9}`` -> ``{"attack": {"lam": 0.9}}``."""
    out: dict = {}
    for key, value in params.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _has_key(config: Any, key: str) -> bool:
    node = config
    for part in key.split("."):
        if not hasattr(node, part):
            return False
        node = getattr(node, part)
    return True


def make_spec(data: dict, *, grid: dict | None = None, search: dict | None = None, **options: Any) -> SweepSpec:
    """A :class:`SweepSpec` from a merged config mapping (its ``sweep:`` section taken out) and command-line
    choices, which win over the section's."""
    base, section = split_sweep_section(data)
    section = {**section, **{k: v for k, v in options.items() if v is not None}}
    if grid:
        section["grid"] = {**(section.get("grid") or {}), **grid}
    if search:
        section["search"] = {**(section.get("search") or {}), **search}
    for key, kind in (("grid", dict), ("search", dict), ("slurm", dict)):
        if not isinstance(section.get(key, {}), kind):
            raise ConfigError(f"sweep.{key} must be a mapping, got {section[key]!r}")
    for key, values in (section.get("grid") or {}).items():
        if not isinstance(values, list):
            raise ConfigError(f"sweep.grid.{key} must be a list of values, got {values!r}")
    return SweepSpec(base=base, **section)


def check_spec(spec: SweepSpec) -> None:
    """Everything that can be checked before any trial: each grid point and range end builds with the kind's
    schema, the objective, the trial count. Raises :class:`ConfigError`."""
    kind, cfg = load_experiment(spec.base)
    if not spec.grid and not spec.search:
        raise ConfigError("a sweep needs --grid key=v1,v2 and/or --search key=RANGE (or sweep.grid / sweep.search "
                          "in the config)")
    overlap = sorted(set(spec.grid) & set(spec.search))
    if overlap:
        raise ConfigError(f"{overlap} are in both the grid and the search ranges; give each key once")
    for key, values in spec.grid.items():
        _check_scalars(key, values)
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"--grid {key} repeats a value: {values}")
    if spec.search and spec.trials is None:
        raise ConfigError("--search needs --trials N (how many trials TPE runs)")
    if spec.trials is not None and not (isinstance(spec.trials, int) and 1 <= spec.trials <= 100_000):
        raise ConfigError(f"--trials must be an integer in [1, 100000], got {spec.trials!r}")
    if not isinstance(spec.objective, str) or not spec.objective:
        raise ConfigError(f"objective must be a metric key such as attacked/noppel_score, got {spec.objective!r}")
    if spec.holdout and not _has_key(cfg, "eval.split"):
        raise ConfigError(f"holdout needs an eval.split key, which the {kind.name} experiment does not have")
    for key in [*spec.grid, *spec.search]:
        if key.split(".")[0] in ("name", "out", "experiment"):
            raise ConfigError(f"{key} cannot be swept (each trial's name and folder are set by the sweep)")
    points = [dict(zip(spec.grid, combo)) for combo in itertools.product(*spec.grid.values())]
    if len(points) > _CHECK_ALL_POINTS:  # check each value on its own
        points = [{key: v} for key, values in spec.grid.items() for v in values]
    for key, raw in spec.search.items():
        kind_, args = parse_distribution(key, raw)
        points += [{key: v} for v in (args if kind_ == "choice" else args)]
    for params in points:
        try:
            load_experiment(merge(spec.base, nested(params)))
        except XaisecError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ConfigError(f"sweep point {shown}: {exc}") from None


# -- storage, study and trial folders --------------------------------------------------------------------------
def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("xaisec sweep needs optuna: pip install 'xaisec[sweep]'") from None
    return optuna


def open_storage(url: str):
    """Optuna's RDB storage at ``url``; an unreachable database or a missing driver raises ConfigError."""
    optuna = _optuna()
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
    optuna = _optuna()

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
    config = yaml.safe_load(yaml.safe_dump(dump_config(cfg), sort_keys=False))
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
        with torch.random.fork_rng(devices=[]), _threads(getattr(cfg, "threads", None)), \
                numerics.denormal_policy(cfg.flush_denormals):
            torch.manual_seed(cfg.seed)
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
            _, cfg = load_experiment(merge(data, {"reference": {"weights": str(weights)}}))
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


def _stop_when_done(target: int):
    """Stop this worker once the finished trials and those other workers are running reach ``target``."""
    from optuna.trial import TrialState

    def callback(study, trial) -> None:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if len(finished_trials(study)) + len(running) >= target:
            study.stop()

    return callback


def _waiting(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def run_worker(sweep_dir: str | Path, worker: int = 0) -> int:
    """One worker: run trials of the sweep in ``sweep_dir`` until it has its size. Importable by path for
    process pools and submitit jobs. Returns the number of trials this worker ran."""
    sweep_dir = Path(sweep_dir)
    spec = SweepSpec.read(sweep_dir)
    study = open_study(spec, sweep_dir, worker)
    if len(finished_trials(study)) >= spec.n_trials and not _waiting(study):
        return 0
    before = len(study.trials)
    study.optimize(TrialRunner(spec, sweep_dir), callbacks=[_stop_when_done(spec.n_trials)], catch=(Exception,),
                   gc_after_trial=False)
    return len(study.trials) - before


# -- launching ---------------------------------------------------------------------------------------------------
def check_launcher(launcher: str, workers: int) -> None:
    """Refuse a launcher that cannot run here, before any trial starts."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if not (isinstance(workers, int) and 1 <= workers <= 4096):
        raise ConfigError(f"--workers must be in [1, 4096], got {workers!r}")
    if launcher in ("submitit-local", "slurm"):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ConfigError(f"--launcher {launcher} needs submitit: pip install 'xaisec[sweep]'") from None
    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("--launcher slurm needs a Slurm cluster, but `sbatch` is not on PATH; run on the cluster's "
                          "login node, or use --launcher process")


def launch(sweep_dir: Path, launcher: str, workers: int, slurm: dict | None = None) -> None:
    """Run ``workers`` workers of the sweep: in this process (one worker), in spawned processes, or as a
    submitit job array (locally or on Slurm); returns when they are done."""
    if launcher == "process" and workers == 1:
        run_worker(sweep_dir)
        return
    if launcher == "process":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in [pool.submit(run_worker, str(sweep_dir), i) for i in range(workers)]:
                done.result()
        return
    import submitit

    folder = sweep_dir / "jobs"
    if launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=(slurm or {}).get("timeout_min", 24 * 60))
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        try:
            executor.update_parameters(**(slurm or {}))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"sweep.slurm: {exc}") from None
    jobs = executor.map_array(run_worker, [str(sweep_dir)] * workers, list(range(workers)))
    log.info("submitted %d %s job(s): %s (logs in %s)", len(jobs), launcher, ", ".join(j.job_id for j in jobs), folder)
    for job in jobs:
        job.result()


# -- the whole sweep ------------------------------------------------------------------------------------------
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
    _optuna()
    check_spec(spec)
    check_launcher(launcher, workers)
    load_experiment(spec.base)  # the base config is valid (its data options included) before anything else
    if spec.storage is not None:
        open_storage(spec.storage)  # unreachable databases fail here, before the folder exists
    check_sweep_dir(spec, sweep_dir)
    if launcher != "slurm":
        first = {key: values[0] for key, values in spec.grid.items()}
        first.update({key: _range_start(raw) for key, raw in spec.search.items()})
        TrialRunner(spec, sweep_dir).config(first, "reference-check")
    prepare_sweep_dir(spec, sweep_dir)
    study = open_study(spec, sweep_dir)
    requeue_interrupted(study, sweep_dir)
    remaining = spec.n_trials - len(finished_trials(study))
    launch(sweep_dir, launcher, max(1, min(workers, remaining + _waiting(study))), spec.slurm)
    return summarise(sweep_dir)


def _range_start(raw: str) -> Any:
    kind, args = parse_distribution("", raw)
    return args[0]


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
    config = yaml.safe_load(yaml.safe_dump(dump_config(cfg), sort_keys=False))
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


__all__ = ["LAUNCHERS", "SweepResult", "SweepSpec", "TrialRunner", "cached_reference", "check_launcher", "check_spec",
           "finished_trials", "launch", "make_spec", "nested", "open_storage", "open_study", "parse_grid",
           "parse_search", "reevaluate", "requeue_interrupted", "resume_sweep", "run_sweep", "run_worker",
           "split_sweep_section", "summarise", "trial_folder"]
