"""Spatially transformed adversarial examples (StAdv, Xiao et al. 2018, https://arxiv.org/abs/1801.02612) and
StAdv-based ADV2 (Zhang et al. 2020, Sec. 6).

A per-pixel flow field ``f`` (B,2,H,W), in pixels, moves every output pixel's sampling point; the image is
resampled bilinearly (``grid_sample``, border padding), so the result is a convex combination of input pixels
and stays in [0,1] (clamped against float rounding). The flow is optimised with Adam on
``total + tau * L_flow(f)``, where ``L_flow`` is the smoothness loss
``sum_p sum_q in N(p) sqrt(||f_p - f_q||^2 + 1e-8)``. ``max_flow`` (pixels) optionally bounds it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..validation import check_int, check_number
from .base import ATTACKS, Attack, BestIterate, RampSchedule, Schedule, objective_for
from .objective import AttackObjective, DetectorTerm, InterpreterTerm


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` (B,C,H,W) at ``pixel + flow`` (flow (B,2,H,W): x then y displacement, in pixels)."""
    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device),
                            torch.arange(w, dtype=x.dtype, device=x.device), indexing="ij")
    gx = 2 * (xs + flow[:, 0]) / max(w - 1, 1) - 1
    gy = 2 * (ys + flow[:, 1]) / max(h - 1, 1) - 1
    out = F.grid_sample(x, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="border", align_corners=True)
    # a convex combination of pixels in [0,1], up to float rounding (1 + 1 ulp happens): clamp only that away
    return out.clamp(0.0, 1.0)


def flow_loss(flow: torch.Tensor) -> torch.Tensor:
    """StAdv's flow smoothness ``(B,)``: summed over pixels and their 4-neighbours."""
    dx = flow[..., :, 1:] - flow[..., :, :-1]
    dy = flow[..., 1:, :] - flow[..., :-1, :]
    return (torch.sqrt(dx.pow(2).sum(1) + 1e-8).flatten(1).sum(1)
            + torch.sqrt(dy.pow(2).sum(1) + 1e-8).flatten(1).sum(1))


@ATTACKS.register("stadv")
class StAdv(Attack):
    """StAdv: Adam (``lr``) on the flow for ``steps`` iterations, flow smoothness weight ``tau``; flow initialised at
    ``init * (U(0,1) - 0.5)`` from ``seed`` (the reference code's 0.2) and clipped to ``max_flow`` pixels if given.
    Targeted by default; ``targeted=False`` moves away from the given true classes (see :class:`PGD`)."""

    name = "stadv"

    def __init__(self, model: nn.Module, objective: AttackObjective | None = None, tau: float = 5e-4,
                 lr: float = 0.01, steps: int = 300, init: float = 0.2, max_flow: float | None = None,
                 seed: int = 0, schedule: Schedule | None = None, keep_best: bool = True, targeted: bool | None = None,
                 flush_denormals: bool | None = None):
        super().__init__(model, objective_for(model, objective, targeted), steps, schedule, keep_best, flush_denormals)
        tau, lr = check_number(tau, "StAdv tau", low=0), check_number(lr, "StAdv lr", low=0, low_open=True)
        init = check_number(init, "StAdv init", low=0)
        if max_flow is not None:
            max_flow = check_number(max_flow, "StAdv max_flow", low=0, low_open=True)
        seed = check_int(seed, "StAdv seed", low=0)
        self.tau, self.lr, self.init, self.max_flow, self.seed = tau, lr, init, max_flow, seed
        self.last_flow: torch.Tensor | None = None

    def _clip(self, flow: torch.Tensor) -> torch.Tensor:
        return flow if self.max_flow is None else flow.clamp(-self.max_flow, self.max_flow)

    def perturb(self, x0: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x0.shape
        gen = torch.Generator().manual_seed(self.seed)
        flow = self._clip(self.init * (torch.rand((b, 2, h, w), generator=gen, dtype=x0.dtype) - 0.5)).to(x0.device)
        flow.requires_grad_(True)
        opt = torch.optim.Adam([flow], lr=self.lr)
        best = BestIterate(x0, self.targeted)
        best_flow = flow.detach().clone()
        for i in range(self.steps):
            x = warp(x0, flow)
            terms = self.evaluate(x, y_target, i)
            (g,) = torch.autograd.grad((terms.total + self.tau * flow_loss(flow)).sum(), flow)
            before = best.key.clone()
            best.update(x, terms, y_target)
            improved = best.key < before
            best_flow[improved] = flow.detach()[improved]
            flow.grad = g
            opt.step()
            with torch.no_grad():
                flow.copy_(self._clip(flow))
        x = warp(x0, flow.detach())
        if not self.keep_best:
            self.last_flow = flow.detach()
            return x.detach()
        before = best.key.clone()
        best.update(x, self.evaluate(x, y_target, self.steps - 1), y_target)
        improved = best.key < before
        best_flow[improved] = flow.detach()[improved]
        self.last_flow = best_flow
        return best.best

    def check(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        super().check(x, x_adv)
        if self.max_flow is not None and self.last_flow is not None and self.last_flow.abs().max() > self.max_flow + 1e-6:
            raise RuntimeError("StAdv exceeded max_flow: this is a bug in xaisec")


@ATTACKS.register("adv2_stadv")
class Adv2StAdv(StAdv):
    """StAdv-based ADV2: ``warmup`` Adam steps on the classifier term, then ``l_prd + c * l_int`` with c ramped,
    always plus ``tau * L_flow`` (reference: tau = 5e-4 for CAM, 2e-3 for RTS)."""

    name = "adv2_stadv"

    def __init__(self, model: nn.Module, interpreters: Sequence[InterpreterTerm], tau: float = 5e-4,
                 lr: float = 0.01, steps: int = 600, warmup: int = 200, c: float = 5.0, c_end: float | None = None,
                 init: float = 0.2, max_flow: float | None = None, prd: str = "ce", label_smoothing: float = 0.0,
                 detector: DetectorTerm | None = None, detector_weight: float = 0.0, seed: int = 0,
                 flush_denormals: bool | None = None):
        if not interpreters:
            raise ConfigError("ADV2 needs at least one interpreter to attack; use StAdv for the plain attack")
        objective = AttackObjective(model, interpreters, prd, label_smoothing, detector=detector,
                                    detector_weight=detector_weight)
        super().__init__(model, objective, tau, lr, steps, init, max_flow, seed, RampSchedule(warmup, steps, c, c_end),
                         flush_denormals=flush_denormals)
