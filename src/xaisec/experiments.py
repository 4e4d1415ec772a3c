"""Registry of experiment kinds that ``xaisec run CONFIG`` dispatches to by the config's ``experiment`` key.

Each kind registers ``(schema, runner)``: ``schema`` is the config dataclass, ``runner(cfg, run_dir, resume)``
does the work and returns the run directory. Modules that define kinds are listed in ``KIND_MODULES``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .registry import Registry

EXPERIMENTS = Registry("experiment")

#: modules whose import registers experiment kinds
KIND_MODULES: tuple[str, ...] = ("xaisec.evasion.experiment",)

DEFAULT_KIND = "backdoor"


@dataclass(frozen=True)
class ExperimentKind:
    schema: type
    runner: Callable[..., Path]


def load_kinds() -> Registry:
    for module in KIND_MODULES:
        importlib.import_module(module)
    return EXPERIMENTS
