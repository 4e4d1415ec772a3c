"""Registry of experiment kinds that ``xaisec run CONFIG`` dispatches to by the config's ``experiment`` key.

Each kind registers ``(schema, runner, report)``: ``schema`` is the config dataclass, ``runner(cfg, run_dir, resume)``
does the work and returns the run directory, the optional ``report(run_dir)`` rebuilds its report from the run
directory's artifacts (``xaisec report RUN_DIR``). Modules that define kinds are listed in ``KIND_MODULES``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .registry import Registry

EXPERIMENTS = Registry("experiment")

#: modules whose import registers experiment kinds
KIND_MODULES: tuple[str, ...] = ("xaisec.backdoor.experiment", "xaisec.evasion.experiment")

DEFAULT_KIND = "backdoor"


@dataclass(frozen=True)
class ExperimentKind:
    schema: type
    runner: Callable[..., Path]
    report: Callable[[Path], Path] | None = None


def load_kinds() -> Registry:
    for module in KIND_MODULES:
        importlib.import_module(module)
    return EXPERIMENTS
