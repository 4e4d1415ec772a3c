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
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .. import numerics
from ..errors import ConfigError, DataError, ModelError
from ..registry import Registry
from ..models import fold_batchnorm
from ..train import eval_mode
from ..validation import check_images, check_int, check_labels, check_number, match_model_dtype, model_logits


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
        check_int(self.warmup, "warmup", low=0)
        check_int(self.steps, "steps", low=1)
        check_number(self.c, "c", low=0)
        if self.c_end is not None:
            check_number(self.c_end, "c_end", low=0)
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
    """Per image, the best iterate seen so far: classified as the target first (untargeted: as any class but the
    given one), then the lowest interpreter term plus detector term (or, while the interpreter term is off, the
    lowest classifier term)."""

    def __init__(self, x0: torch.Tensor, targeted: bool = True):
        self.targeted = targeted
        self.best = x0.detach().clone()
        self.key = torch.full((len(x0),), float("inf"), dtype=torch.float64, device=x0.device)

    def update(self, x: torch.Tensor, terms: Terms, y_target: torch.Tensor) -> None:
        hit = (terms.logits.argmax(1) == y_target) if self.targeted else (terms.logits.argmax(1) != y_target)
        score = terms.interp if terms.interp is not None else 1e6 + terms.prd
        if terms.detect is not None:
            score = score + terms.detect
        key = torch.where(hit, 0.0, 1e12) + score.detach().double()
        better = key < self.key
        self.key = torch.where(better, key, self.key)
        self.best[better] = x.detach()[better]


def objective_for(model: nn.Module, objective, targeted: bool | None):
    """The attack's objective: ``objective`` if given (``targeted`` must then agree with it or be None), else a
    classifier-only :class:`~xaisec.evasion.objective.AttackObjective` (targeted unless ``targeted=False``)."""
    from .objective import AttackObjective

    if targeted is not None and not isinstance(targeted, bool):
        raise ConfigError(f"targeted must be True or False, got {targeted!r}")
    if objective is None:
        return AttackObjective(model, targeted=True if targeted is None else targeted)
    if targeted is not None and getattr(objective, "targeted", True) != targeted:
        raise ConfigError(f"targeted={targeted} contradicts the given objective (targeted={objective.targeted}); "
                          "pass targeted to the AttackObjective or leave it out here")
    return objective


#: every input-time attack, registered with ``@ATTACKS.register("name")`` in the file that defines it
ATTACKS = Registry("attack")


class Attack(abc.ABC):
    """Base class of input-time attacks; subclasses implement :meth:`perturb` on a validated batch.

    ``objective``: the loss (default: a classifier-only :class:`AttackObjective`); ``steps``: iterations;
    ``schedule(step) -> c``: weight of the interpreter term per step; ``keep_best``: return each image's best
    iterate (see :class:`BestIterate`) instead of the last one; ``flush_denormals``: subnormal floats are flushed to
    zero during the attack (:func:`xaisec.numerics.flush_denormals`).
    """

    name = "attack"

    def __init__(self, model: nn.Module, objective=None, steps: int = 100, schedule: Schedule | None = None,
                 keep_best: bool = True, flush_denormals: bool | None = None):
        from .objective import AttackObjective

        if not isinstance(model, nn.Module):
            raise ModelError(f"an attack needs a torch.nn.Module, got {type(model).__name__}")
        steps = check_int(steps, "attack steps", low=1, high=10_000_000)
        if objective is not None and not isinstance(objective, AttackObjective):
            raise ConfigError(f"objective must be an AttackObjective, got {type(objective).__name__}")
        self.model = model
        self.objective = objective if objective is not None else AttackObjective(model)
        self.steps, self.keep_best, self.flush_denormals = steps, bool(keep_best), flush_denormals
        self.schedule = schedule or no_interpreter

    @property
    def targeted(self) -> bool:
        """True: the labels are target classes to reach; False: true classes to leave (see ``AttackObjective``)."""
        return self.objective.targeted

    def __call__(self, x: torch.Tensor, y_target: torch.Tensor, **context) -> torch.Tensor:
        """Adversarial version of ``x`` (B,C,H,W) in [0,1] aimed at classes ``y_target`` (B,) (for an untargeted
        attack: the true classes to move away from); ``context`` goes to the objective (e.g.
        ``target_maps={"cam": maps}``). Returns a detached tensor of the shape of ``x`` (in the model's dtype: other
        float dtypes are cast, with a warning). A plain targeted attack whose targets all equal the clean predictions has
        nothing to do and warns (the torchattacks convention ``attack(x, y_true)`` is ``targeted=False`` here)."""
        check_images(x, "x")
        x = match_model_dtype(x, self.model)
        with torch.no_grad(), eval_mode(self.model):
            logits = model_logits(self.model, x)
        name = "y_target" if self.targeted else "y (true classes)"
        if isinstance(y_target, (str, bytes)):
            raise DataError(f"{name} must be a (B,) tensor of class indices, got {y_target!r}")
        y_target = check_labels(y_target, logits.shape[1], name, batch=len(x)).to(x.device)
        if self.targeted and not self.objective.interpreters and bool((logits.argmax(1) == y_target).all()):
            warnings.warn(f"{type(self).__name__} is targeted and every target class in y_target is already the "
                          "predicted class of its image: nothing to attack. For an untargeted attack away from true "
                          "labels (the torchattacks convention), use targeted=False", UserWarning, stacklevel=2)
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
