"""L-inf PGD (Madry et al. 2018, https://arxiv.org/abs/1706.06083), targeted, and PGD-based ADV2.

Each step: ``x <- clip_[0,1](Proj_{||x - x0||_inf <= eps}(x - step * sign(grad total)))``. With the default
classifier-only objective this is the PGD baseline; :class:`Adv2PGD` adds the interpreter term after a warm-up
(Zhang et al. 2020: stage 1 plain PGD towards the target class, stage 2 on l_prd + c * l_int with c ramped).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..validation import check_int, check_number
from .base import ATTACKS, Attack, BestIterate, RampSchedule, Schedule, objective_for
from .objective import AttackObjective, DetectorTerm, InterpreterTerm


def project_linf(x: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point of the L-inf ball of radius ``eps`` around ``x0`` intersected with [0,1]."""
    return torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0, 1)


@ATTACKS.register("pgd")
class PGD(Attack):
    """L-inf PGD: ``eps`` radius, ``step`` size, ``steps`` iterations, optional uniform ``random_start`` (drawn
    from ``seed``). Returns each image's best iterate (:class:`BestIterate`). Targeted by default
    (``attack(x, y_target)`` moves towards ``y_target``); ``targeted=False`` is the untargeted attack
    ``attack(x, y_true)`` away from the true classes (torchattacks' convention)."""

    name = "pgd"

    def __init__(self, model: nn.Module, objective: AttackObjective | None = None, eps: float = 0.031,
                 step: float = 1 / 255, steps: int = 100, random_start: bool = False, seed: int = 0,
                 schedule: Schedule | None = None, keep_best: bool = True, targeted: bool | None = None,
                 flush_denormals: bool | None = None):
        objective = objective_for(model, objective, targeted)
        super().__init__(model, objective, steps, schedule, keep_best, flush_denormals)
        eps = check_number(eps, "PGD eps", low=0, low_open=True, high=1)
        step = check_number(step, "PGD step", low=0, low_open=True, high=1)
        self.eps, self.step, self.random_start = eps, step, bool(random_start)
        self.seed = check_int(seed, "PGD seed", low=0)

    def perturb(self, x0: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
        x = x0.clone()
        if self.random_start:
            gen = torch.Generator().manual_seed(self.seed)
            noise = (2 * torch.rand(x0.shape, generator=gen, dtype=x0.dtype) - 1).to(x0.device)
            x = project_linf(x0 + self.eps * noise, x0, self.eps)
        best = BestIterate(x, self.targeted)
        for i in range(self.steps):
            x = x.detach().requires_grad_(True)
            terms = self.evaluate(x, y_target, i)
            (g,) = torch.autograd.grad(terms.total.sum(), x)
            best.update(x, terms, y_target)
            x = project_linf(x.detach() - self.step * g.sign(), x0, self.eps)
        if not self.keep_best:
            return x.detach()
        best.update(x, self.evaluate(x, y_target, self.steps - 1), y_target)
        return best.best

    def check(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        super().check(x, x_adv)
        if (x_adv - x).abs().max() > self.eps + 1e-6:
            raise RuntimeError("PGD left its L-inf ball: this is a bug in xaisec")


@ATTACKS.register("adv2_pgd")
class Adv2PGD(PGD):
    """PGD-based ADV2 against ``interpreters``: ``warmup`` steps of plain PGD towards the target class, then
    ``steps - warmup`` steps on ``l_prd + c * l_int`` with c ramped from ``c`` to ``c_end`` (default 2c).
    ``detector`` / ``detector_weight`` add the adaptive term. Call with ``target_maps={name: (B,1,H,W)}``."""

    name = "adv2_pgd"

    def __init__(self, model: nn.Module, interpreters: Sequence[InterpreterTerm], eps: float = 0.031,
                 step: float = 1 / 255, steps: int = 1000, warmup: int = 300, c: float = 5.0,
                 c_end: float | None = None, prd: str = "ce", label_smoothing: float = 0.0,
                 detector: DetectorTerm | None = None, detector_weight: float = 0.0, random_start: bool = False,
                 seed: int = 0, flush_denormals: bool | None = None):
        if not interpreters:
            raise ConfigError("ADV2 needs at least one interpreter to attack; use PGD for the plain attack")
        objective = AttackObjective(model, interpreters, prd, label_smoothing, detector=detector,
                                    detector_weight=detector_weight)
        super().__init__(model, objective, eps, step, steps, random_start, seed, RampSchedule(warmup, steps, c, c_end),
                         flush_denormals=flush_denormals)
