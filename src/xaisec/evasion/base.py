"""Input-time attacks: the :class:`Attack` base class and its bookkeeping.

``attack(x, y_target, **context) -> x_adv``. The base class owns everything that is not the perturbation
algorithm (torchattacks' split): input checks, eval mode (restored after) with eval-mode BatchNorm folded into the
convs (:func:`~xaisec.models.fold_batchnorm`) and subnormal floats flushed to zero, the [0,1] box, keeping each
image's best iterate, and a final check that the constraints hold. The loss is injected (an
:class:`~xaisec.evasion.objective.AttackObjective`: classifier term + c * interpreter term + d * detector term);
the perturbation family (L-inf PGD, StAdv flow fields) is the subclass; ``schedule(step) -> c`` switches the
interpreter term on and ramps it (ADV2's two stages).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .. import numerics
from ..errors import ConfigError, ModelError
from ..models import fold_batchnorm
from ..train import eval_mode
from ..validation import check_images, check_labels


@dataclass
class Terms:
    """One evaluation of the attack loss on a batch: ``total`` (B,) differentiable; the rest detached.

    ``prd`` classifier term, ``interp`` interpreter term (None while c = 0), ``detect`` detector term (or None),
    ``logits`` (B,K) of the classifier on the evaluated inputs.
    """

    total: torch.Tensor
    logits: torch.Tensor
    prd: torch.Tensor
    interp: torch.Tensor | None = None
    detect: torch.Tensor | None = None


Schedule = Callable[[int], float]


@dataclass(frozen=True)
class RampSchedule:
    """ADV2's schedule: c = 0 for the first ``warmup`` steps (stage 1: plain attack towards the target class),
    then c grows linearly from ``c`` to ``c_end`` (default 2c, as the reference code) until step ``steps - 1``."""

    warmup: int
    steps: int
    c: float
    c_end: float | None = None

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.steps <= self.warmup:
            raise ConfigError(f"the schedule needs 0 <= warmup < steps, got warmup={self.warmup}, steps={self.steps}")
        if self.c < 0 or (self.c_end is not None and self.c_end < 0):
            raise ConfigError(f"the interpreter weight c must be >= 0, got c={self.c}, c_end={self.c_end}")

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return 0.0
        end = 2 * self.c if self.c_end is None else self.c_end
        span = max(1, self.steps - self.warmup - 1)
        return self.c + (end - self.c) * min(1.0, (step - self.warmup) / span)


def no_interpreter(step: int) -> float:
    """The schedule of plain attacks: the interpreter term is never evaluated."""
    return 0.0


class BestIterate:
    """Per image, the best iterate seen so far: classified as the target first, then the lowest interpreter term
    plus detector term (or, while the interpreter term is off, the lowest classifier term)."""

    def __init__(self, x0: torch.Tensor):
        self.best = x0.detach().clone()
        self.key = torch.full((len(x0),), float("inf"), dtype=torch.float64, device=x0.device)

    def update(self, x: torch.Tensor, terms: Terms, y_target: torch.Tensor) -> None:
        hit = terms.logits.argmax(1) == y_target
        score = terms.interp if terms.interp is not None else 1e6 + terms.prd
        if terms.detect is not None:
            score = score + terms.detect
        key = torch.where(hit, 0.0, 1e12) + score.detach().double()
        better = key < self.key
        self.key = torch.where(better, key, self.key)
        self.best[better] = x.detach()[better]


class Attack(abc.ABC):
    """Base class of input-time attacks; subclasses implement :meth:`perturb` on a validated batch.

    ``objective``: the loss (default: a classifier-only :class:`AttackObjective`); ``steps``: iterations;
    ``schedule(step) -> c``: weight of the interpreter term per step; ``keep_best``: return each image's best
    iterate (see :class:`BestIterate`) instead of the last one; ``flush_denormals``: subnormal floats are flushed to
    zero during the attack (:func:`xaisec.numerics.flush_denormals`).
    """

    name = "attack"

    def __init__(self, model: nn.Module, objective=None, steps: int = 100, schedule: Schedule | None = None,
                 keep_best: bool = True, flush_denormals: bool = True):
        from .objective import AttackObjective

        if not isinstance(model, nn.Module):
            raise ModelError(f"an attack needs a torch.nn.Module, got {type(model).__name__}")
        if steps < 1:
            raise ConfigError(f"an attack needs steps >= 1, got {steps}")
        self.model = model
        self.objective = objective if objective is not None else AttackObjective(model)
        self.steps, self.keep_best, self.flush_denormals = steps, keep_best, flush_denormals
        self.schedule = schedule or no_interpreter

    def __call__(self, x: torch.Tensor, y_target: torch.Tensor, **context) -> torch.Tensor:
        """Adversarial version of ``x`` (B,C,H,W) in [0,1] aimed at classes ``y_target`` (B,); ``context`` goes to
        the objective (e.g. ``target_maps={"cam": maps}``). Returns a detached tensor of the shape of ``x``."""
        check_images(x, "x")
        with torch.no_grad(), eval_mode(self.model):
            num_classes = self.model(x[:1]).shape[1]
        y_target = check_labels(torch.as_tensor(y_target, device=x.device), num_classes, "y_target", batch=len(x))
        x = x.detach()
        # eval-mode BatchNorm folded into the convs: same gradients, no BatchNorm pass in the (double) backward
        with numerics.flush_denormals(self.flush_denormals), eval_mode(self.model), fold_batchnorm(self.model), \
                torch.enable_grad():
            self.objective.prepare(x, y_target, **context)
            x_adv = self.perturb(x, y_target)
        self.check(x, x_adv)
        return x_adv.detach()

    @abc.abstractmethod
    def perturb(self, x: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
        """The perturbation algorithm on a validated batch (model already in eval mode)."""

    def check(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        """Raise if ``x_adv`` leaves the [0,1] box (subclasses add their own constraints)."""
        if x_adv.shape != x.shape or not torch.isfinite(x_adv).all() or x_adv.min() < 0 or x_adv.max() > 1:
            raise RuntimeError(f"{type(self).__name__} produced inputs outside [0,1]: this is a bug in xaisec")

    def evaluate(self, x: torch.Tensor, y_target: torch.Tensor, step: int) -> Terms:
        """The objective at ``x`` with the scheduled c of ``step``."""
        return self.objective(x, y_target, self.schedule(step))
