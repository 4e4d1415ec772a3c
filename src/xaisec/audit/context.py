"""What every audit check receives (:class:`AuditContext`) and returns (:class:`CheckResult`), and the registry
of checks in the order ``xaisec audit`` runs them."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..data import ImageDataset
from ..registry import Registry

SUSPICIOUS = "suspicious"
NO_EVIDENCE = "no evidence"
INCONCLUSIVE = "inconclusive"
SKIPPED = "skipped"
INFO = "info"
VERDICTS = (SUSPICIOUS, NO_EVIDENCE, INCONCLUSIVE, SKIPPED, INFO)


@dataclass
class AuditContext:
    """The model under audit and the data the checks share.

    ``x_fit, y_fit``: clean images the checks fit/calibrate on (reverse-engineering, channel ranking, thresholds);
    ``x_eval, y_eval``: other clean images for evaluation (never used for fitting); ``suspects``: optional inputs to
    screen; ``reference``: optional trusted model of the same task; ``deadline``: ``time.monotonic()`` value by which
    the whole audit should end; ``shared``: results one check leaves for later ones (e.g. Neural Cleanse's triggers).
    """

    model: nn.Module
    data: ImageDataset
    x_fit: torch.Tensor
    y_fit: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    deadline: float
    suspects: torch.Tensor | None = None
    reference: nn.Module | None = None
    seed: int = 0
    progress: bool = True
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class Figure:
    """A figure inlined in the report: ``png`` is base64-encoded PNG."""

    caption: str
    png: str


@dataclass
class Finding:
    """What a check function returns: a verdict from :data:`VERDICTS`, a one-paragraph ``summary`` in plain words,
    ``evidence`` numbers (JSON-ready) and figures. The runner adds the check's name, title and time."""

    verdict: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)


@dataclass
class CheckResult:
    """One check's outcome: a verdict from :data:`VERDICTS`, a one-paragraph ``summary`` in plain words,
    ``evidence`` numbers (JSON-ready), figures, seconds taken."""

    name: str
    title: str
    verdict: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "verdict": self.verdict, "summary": self.summary, "evidence": self.evidence,
                "seconds": round(self.seconds, 3), "figures": [f.caption for f in self.figures]}


@dataclass(frozen=True)
class Check:
    """``run(ctx, deadline) -> Finding``; ``budget_share``: the fraction of the remaining time it may use;
    ``min_seconds``: below this much time left it is skipped."""

    name: str
    title: str
    run: Callable[[AuditContext, float], Finding]
    budget_share: float = 0.2
    min_seconds: float = 1.0
    what_it_tests: str = ""


AUDIT_CHECKS = Registry("audit check")


def register_check(name: str, title: str, *, budget_share: float = 0.2, min_seconds: float = 1.0,
                   what_it_tests: str = "") -> Callable:
    """Decorator: ``fn(ctx, deadline) -> Finding`` becomes a registered :class:`Check`."""

    def decorator(fn: Callable[[AuditContext, float], Finding]) -> Callable:
        AUDIT_CHECKS.register(name)(Check(name, title, fn, budget_share, min_seconds, what_it_tests))
        return fn

    return decorator


def skipped(reason: str) -> Finding:
    return Finding(SKIPPED, reason)
