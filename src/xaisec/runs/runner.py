"""The one runner every experiment kind goes through: validate, claim the run directory, run the stages, write
``metrics.json`` and the report.

An experiment kind is a subclass of :class:`Experiment` registered with :func:`register_experiment`: a config
``schema`` (a dataclass deriving from :class:`~xaisec.runs.schema.RunConfig`), ``prepare(cfg)`` (loads and checks
everything that can fail on bad input, before the run directory exists), an ordered tuple of :class:`Stage` (each
returns a typed :class:`~xaisec.runs.artifacts.Artifact` that the runner saves as ``<stage>.safetensors``),
``metrics(ctx)`` (the flat :class:`~xaisec.records.Metric` records of ``metrics.json``) and ``report(run_dir)``
(``report.html`` from the run directory alone).

The runner owns the lifecycle, written once for every kind: the run directory's claim and lock, status and
per-stage timing, resume (finished stages are loaded from their artifacts; work inside a stage resumes from
``ctx.cached`` tensors and training checkpoints), the run's own RNG seed (the caller's RNG state is restored),
threads, and ``failed``/``interrupted`` markers.
"""
from __future__ import annotations

import abc
import contextlib
import importlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import torch
import yaml

from .. import distributed, numerics
from ..config import build, dump_config
from ..errors import ConfigError, XaisecError
from ..io import atomic_write_json
from ..records import Metric
from ..registry import Registry
from .artifacts import Artifact
from .rundir import LOCK_FILE, RunDir, unique_dir

log = logging.getLogger(__name__)

EXPERIMENTS = Registry("experiment kind", "experiments")

#: modules whose import registers the packaged experiment kinds
KIND_MODULES: tuple[str, ...] = ("xaisec.runs.backdoor", "xaisec.runs.adv2", "xaisec.runs.defenses", "xaisec.runs.tabular")
DEFAULT_KIND = "backdoor"


def register_experiment(cls: type["Experiment"]) -> type["Experiment"]:
    """Class decorator: register an :class:`Experiment` subclass under its ``name``."""
    EXPERIMENTS.register(cls.name)(cls)
    return cls


def load_kinds() -> Registry:
    for module in KIND_MODULES:
        importlib.import_module(module)
    return EXPERIMENTS


def get_kind(name: Any) -> "Experiment":
    """The experiment kind registered as ``name`` (an instance), with suggestions for unknown names."""
    if not isinstance(name, str):
        raise ConfigError(f"experiment must be the name of an experiment kind ({', '.join(load_kinds().names())}), "
                          f"got {name!r}")
    try:
        return load_kinds().get(name)()
    except ConfigError:
        raise
    except Exception as exc:  # Registry raises XaisecError for unknown names
        raise ConfigError(f"experiment: {exc}") from None


@dataclass(frozen=True)
class Stage:
    """One step of an experiment: ``run(ctx)`` returns an instance of ``result``, saved as ``<name>.safetensors``.
    ``enabled(cfg)`` skips the stage for configs that turn it off."""

    name: str
    result: type[Artifact]
    run: Callable[["RunContext"], Artifact]
    enabled: Callable[[Any], bool] = lambda cfg: True


@dataclass
class RunContext:
    """What a stage sees: the validated config, the prepared inputs, the finished stages' results (by stage name)
    and the run directory; ``cached`` keeps finished work inside a stage across a kill."""

    cfg: Any
    inputs: Any
    rd: RunDir
    results: dict[str, Artifact] = field(default_factory=dict)
    progress: bool = True
    stage: str = ""
    timing: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, stage: str) -> Any:
        return self.results[stage]

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` (a tensor or a nested dict of tensors) once per run, stored as ``cache/<stage>/<key>``; a
        resumed run reloads it. Its time is recorded under ``timing[key]``."""
        path = self.rd.cache / self.stage / f"{key}.safetensors"
        if path.is_file():
            return _Cached.load(path).value
        start = time.perf_counter()
        value = make()
        self.timing[key] = time.perf_counter() - start
        _Cached(value).save(path)
        return value


@dataclass
class _Cached(Artifact):
    value: Any


class Experiment(abc.ABC):
    """Base class of experiment kinds (see the module docstring)."""

    name: ClassVar[str]
    schema: ClassVar[type]
    stages: ClassVar[tuple[Stage, ...]]

    def prepare(self, cfg: Any) -> Any:
        """Load and check everything a run needs; raises :class:`~xaisec.errors.XaisecError` on bad input."""
        return None

    @abc.abstractmethod
    def metrics(self, ctx: RunContext) -> tuple[dict[str, Metric], dict[str, Any]]:
        """``(records, context)`` for ``metrics.json``: flat metric records and descriptive context."""

    @abc.abstractmethod
    def report(self, run_dir: Path) -> Path:
        """Write ``report.html`` (and its figures) from the run directory alone; returns its path."""

    def headline(self, metrics: dict[str, Metric]) -> list[str]:
        """The few lines printed when a run ends (default: none)."""
        return []


@dataclass
class RunResult:
    """What :func:`run_experiment` returns: the run directory, its metric records and context."""

    path: Path
    metrics: dict[str, Metric]
    context: dict[str, Any]
    headline: list[str] = field(default_factory=list)

    @property
    def report(self) -> Path:
        return self.path / "report.html"


def load_experiment(data: dict[str, Any]) -> tuple["Experiment", Any]:
    """``(kind, validated config)`` from a merged config mapping (its ``experiment`` key picks the kind; a
    ``sweep:`` section is read by ``xaisec sweep`` only and left out here)."""
    kind = get_kind(data.get("experiment", DEFAULT_KIND))
    return kind, build(kind.schema, {k: v for k, v in data.items() if k != "sweep"})


def stored_config(cfg: Any) -> dict[str, Any]:
    """The validated config ``cfg`` as the plain mapping a run's ``config.yaml`` holds (YAML types only)."""
    return yaml.safe_load(yaml.safe_dump(dump_config(cfg), sort_keys=False))


def with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored ``config.yaml`` with the keys added to the schema since the run started, at their defaults (the
    values it holds stay as written); as written if it no longer validates."""
    try:
        return stored_config(load_experiment(stored)[1])
    except XaisecError:
        return stored


def _diff(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{where}.{key}" if where else str(key))
        return out
    return [] if a == b else [f"{where}: stored {a!r}, given {b!r}"]


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def run_environment(cfg: Any) -> Iterator[None]:
    """What every run's work happens inside: its own RNG seeded from ``cfg.seed`` (the caller's RNG state is restored
    on exit), ``cfg.threads`` CPU threads and the ``cfg.flush_denormals`` policy, flushing for the whole run on
    the calling thread and on the intra-op worker threads the run starts (:mod:`xaisec.numerics`)."""
    with torch.random.fork_rng(devices=[]), numerics.denormal_policy(cfg.flush_denormals), \
            numerics.flush_denormals(cfg.flush_denormals), _threads(cfg.threads):
        if cfg.flush_denormals and torch.get_num_threads() > 1 and not numerics.workers_flushed():
            log.warning("torch's %d CPU worker threads were started before this run and do not flush subnormal "
                        "floats (slow on many CPUs): run in a fresh process (`xaisec run` is one) or with threads=1",
                        torch.get_num_threads())
        torch.manual_seed(cfg.seed)
        yield


def default_run_dir(cfg: Any) -> Path:
    return unique_dir(Path(cfg.out) / str(cfg.name))


def run_experiment(cfg: Any, run_dir: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
                   progress: bool = True) -> RunResult:
    """Run the validated config ``cfg`` (any kind) into ``run_dir`` (default ``<out>/<name>``, made unique) and
    return its metrics. ``resume`` continues the run in ``run_dir`` (its stored config must equal ``cfg``);
    ``overwrite`` replaces a finished or dead run there. Nothing is created before ``prepare`` succeeded.

    Under ``torchrun`` (:mod:`xaisec.distributed`) every rank runs every stage (training is data-parallel,
    evaluation chunks are shared out and gathered), but only rank 0 writes ``run_dir``: the other ranks write
    into a temporary folder deleted at the end and return the requested path (without the suffix rank 0 may add
    to make a default path unique). With ``resume`` they start from a copy of rank 0's run directory (stage
    artifacts, checkpoints, cached work), taken after rank 0 has checked and locked it and before any stage runs,
    so every rank resumes from the same state."""
    kind = get_kind(cfg.experiment)
    if not distributed.is_main():
        return _run_secondary(kind, cfg, run_dir, resume, progress)
    rd = RunDir(run_dir if run_dir is not None else default_run_dir(cfg))
    config = stored_config(cfg)
    if resume:
        changes = _diff(with_defaults(rd.read_config()), config)
        if changes:
            raise ConfigError(f"--resume: the config differs from the one {rd.path} was started with "
                              f"({'; '.join(changes[:5])}); start a new run instead")
        if rd.state() == "running":
            raise ConfigError(f"{rd.path} is being written by another xaisec process")
    else:
        rd.claim(overwrite, create=False)
    with run_environment(cfg):
        inputs = kind.prepare(cfg)
        if not resume:
            rd.claim(overwrite)
        with rd.lock():
            if not resume:
                rd.create(config, cfg.seed)
            elif distributed.active():
                distributed.barrier()  # checked and locked: the other ranks copy the run directory now ...
                distributed.barrier()  # ... and have copied it before any stage changes it
            result = _run_stages(kind, cfg, inputs, rd, progress)
        distributed.barrier()
        return result


def _run_secondary(kind: Experiment, cfg: Any, run_dir: str | Path | None, resume: bool, progress: bool) -> RunResult:
    """A rank other than 0: the same stages, written to a throw-away folder, so the run directory is rank 0's (with
    ``resume``: a copy of it, read between rank 0's two barriers; several nodes need it on a shared file system)."""
    with run_environment(cfg), tempfile.TemporaryDirectory(prefix="xaisec-rank") as tmp:
        inputs = kind.prepare(cfg)
        rd = RunDir(Path(tmp) / "run")
        if resume:
            distributed.barrier()
            shutil.copytree(Path(run_dir), rd.path, ignore=shutil.ignore_patterns(LOCK_FILE))
            distributed.barrier()
        with rd.lock():
            if not resume:
                rd.create(stored_config(cfg), cfg.seed)
            result = _run_stages(kind, cfg, inputs, rd, False)
        distributed.barrier()
    path = Path(run_dir) if run_dir is not None else Path(cfg.out) / str(cfg.name)
    return RunResult(path, result.metrics, result.context, result.headline)


def _run_stages(kind: Experiment, cfg: Any, inputs: Any, rd: RunDir, progress: bool) -> RunResult:
    ctx = RunContext(cfg, inputs, rd, progress=progress)
    seconds = dict(rd.status().get("seconds", {}))
    try:
        for stage in kind.stages:
            if not stage.enabled(cfg):
                continue
            path = rd / f"{stage.name}.safetensors"
            if path.is_file():
                ctx.results[stage.name] = stage.result.load(path)
                log.info("%s: finished earlier, loaded from %s", stage.name, path.name)
                continue
            rd.set_status("running", stage=stage.name)
            ctx.stage = stage.name
            start = time.perf_counter()
            torch.manual_seed(cfg.seed)
            result = stage.run(ctx)
            if not isinstance(result, stage.result):
                raise TypeError(f"stage {stage.name!r} returned {type(result).__name__}, not {stage.result.__name__}")
            result.save(path)
            ctx.results[stage.name] = result
            seconds[stage.name] = round(time.perf_counter() - start, 3)
            rd.set_status("running", stage=stage.name, seconds=seconds)
        rd.set_status("running", stage="metrics")
        records, context = kind.metrics(ctx)
        atomic_write_json(rd / "metrics.json", metrics_document(kind.name, cfg, records, context))
        rd.set_status("running", stage="report")
        report = kind.report(rd.path)
        rd.set_status("finished", stage="done", report=report.name, seconds=seconds)
    except BaseException as exc:
        rd.set_status("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                      error=f"{type(exc).__name__}: {exc}", seconds=seconds)
        raise
    log.info("%s run written to %s", kind.name, rd.path)
    return RunResult(rd.path, records, context, kind.headline(records))


def metrics_document(kind: str, cfg: Any, records: dict[str, Metric], context: dict[str, Any]) -> dict[str, Any]:
    """The content of every ``metrics.json``: kind, name, context and the flat metric records."""
    return {"experiment": kind, "name": cfg.name,
            "directions": "from the attacker's point of view: 'higher'/'lower' is better, 'none' is informative only",
            "context": context, "metrics": {k: m.as_dict() for k, m in sorted(records.items())}}


def read_metrics(run_dir: str | Path) -> tuple[dict[str, Metric], dict[str, Any]]:
    """``(records, context)`` of a finished run's ``metrics.json`` (damaged files raise ConfigError)."""
    rd = RunDir(run_dir)
    if not (rd / "metrics.json").is_file():
        raise ConfigError(f"{rd.path} has no metrics.json yet (state: {rd.state()}); finish the run first with "
                          f"`xaisec run --resume {rd.path}`")
    doc = rd.read_json("metrics.json")
    try:
        return {k: Metric.from_dict(v) for k, v in doc["metrics"].items()}, doc.get("context", {})
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{rd / 'metrics.json'} is damaged ({exc}); rerun the run's last stages with "
                          f"`xaisec run --resume {rd.path}` after deleting it") from None


def load_run(run_dir: str | Path) -> tuple[Experiment, Any]:
    """``(kind, validated config)`` of an existing run directory (for resume, report and audit)."""
    return load_experiment(RunDir(run_dir).read_config())


def build_report(run_dir: str | Path) -> Path:
    """Rebuild ``report.html`` of any kind of run from its run directory alone."""
    kind, _ = load_run(run_dir)
    return kind.report(Path(run_dir))


__all__ = ["DEFAULT_KIND", "EXPERIMENTS", "Experiment", "RunContext", "RunResult", "Stage", "build_report",
           "get_kind", "load_experiment", "load_kinds", "load_run", "read_metrics", "register_experiment",
           "run_experiment", "stored_config", "with_defaults"]
