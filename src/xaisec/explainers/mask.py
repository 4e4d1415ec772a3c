"""MASK: meaningful perturbation (Fong & Vedaldi 2017, https://arxiv.org/abs/1704.03296).

Per image, a low-resolution mask ``keep`` in [0,1] (1 = keep the pixel, 0 = replace it by its blurred value)
is optimised with Adam to minimise ``l1 * mean(1 - keep) + tv * TV_beta(keep) + p_target(blend(x, blur(x), keep))``:
the smallest, smoothest deleted region that destroys the class score. The map is ``1 - keep`` upsampled to the
input: high where deleting evidence matters.

With ``create_graph=True`` the last ``unroll`` Adam steps are taken inside the autograd graph, so the map is
differentiable w.r.t. the input (the unrolled inner loop of ADV2's Algorithm 1, Zhang et al. 2020). Adam is
written out functionally here because ``torch.optim`` steps cannot be differentiated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import numerics
from ..validation import check_int, check_number, model_logits
from .base import EXPLAINERS, Explainer, Explanation, resolve_target
from .ops import blend, gaussian_blur, total_variation


@dataclass
class MaskState:
    """Optimisation state of a batch of masks: ``keep`` (B,1,h,w) in [0,1] and Adam's moments and step count."""

    keep: torch.Tensor
    m1: torch.Tensor
    m2: torch.Tensor
    step: int = 0

    def detach(self) -> "MaskState":
        return MaskState(self.keep.detach(), self.m1.detach(), self.m2.detach(), self.step)


@EXPLAINERS.register()
class MeaningfulPerturbation(Explainer):
    """MASK explainer. Options: ``steps`` Adam steps (lr ``lr``), penalties ``l1`` and ``tv`` (with
    exponent ``tv_beta``), Gaussian ``blur_sigma`` (pixels) of the deletion, mask resolution H/``mask_scale``,
    ``unroll`` differentiable steps with ``create_graph=True``; ``flush_denormals``: subnormal floats are flushed to
    zero during the optimisation (:func:`xaisec.numerics.flush_denormals`). Maps (B,1,H,W) in [0,1]."""

    name = "mask"
    needs_images = True
    #: only the last ``unroll`` steps are differentiated (truncated back-propagation), so gradients w.r.t.
    #: parameters are exact only when ``unroll == steps``
    differentiable = False
    attackable = True
    #: masks in [0,1] compared as they are; a larger c, as its maps move slowly through the look-ahead
    attack_defaults = {"norm": "none", "c": 100.0}

    @classmethod
    def attack_term_type(cls) -> type:
        """ADV2's Algorithm 1: masks that persist across attack steps (:class:`~xaisec.evasion.objective.MaskTerm`)."""
        from ..evasion.objective import MaskTerm

        return MaskTerm

    def __init__(self, model: nn.Module, steps: int = 300, lr: float = 0.1, l1: float = 0.05, tv: float = 0.2,
                 tv_beta: float = 3.0, blur_sigma: float = 3.0, mask_scale: int = 4, unroll: int = 2,
                 flush_denormals: bool | None = None):
        super().__init__(model)
        steps = check_int(steps, "mask steps", low=1, high=100_000)
        unroll = check_int(unroll, "mask unroll", low=0, high=steps)
        mask_scale = check_int(mask_scale, "mask mask_scale", low=1)
        lr = check_number(lr, "mask lr", low=0, low_open=True)
        blur_sigma = check_number(blur_sigma, "mask blur_sigma", low=0, low_open=True, high=1000)
        l1, tv = check_number(l1, "mask l1", low=0), check_number(tv, "mask tv", low=0)
        tv_beta = check_number(tv_beta, "mask tv_beta", low=1, high=100)
        self.steps, self.lr, self.l1, self.tv, self.tv_beta = steps, lr, l1, tv, tv_beta
        self.blur_sigma, self.mask_scale, self.unroll = blur_sigma, mask_scale, unroll
        self.flush_denormals = flush_denormals

    def init_state(self, x: torch.Tensor) -> MaskState:
        """Masks that keep the whole image (Fong & Vedaldi's initialisation)."""
        h, w = max(1, x.shape[-2] // self.mask_scale), max(1, x.shape[-1] // self.mask_scale)
        keep = torch.ones(len(x), 1, h, w, dtype=x.dtype, device=x.device)
        return MaskState(keep, torch.zeros_like(keep), torch.zeros_like(keep))

    def upsample(self, keep: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(keep, size=size, mode="bilinear", align_corners=False)

    def loss(self, x: torch.Tensor, blurred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Per-image objective ``(B,)`` of the masks ``keep`` (B,1,h,w)."""
        perturbed = blend(x, blurred, self.upsample(keep, tuple(x.shape[-2:])))
        prob = F.softmax(self.model(perturbed), dim=1).gather(1, target[:, None])[:, 0]
        return self.l1 * (1 - keep).flatten(1).mean(1) + self.tv * total_variation(keep, self.tv_beta) + prob

    def optimise(self, x: torch.Tensor, target: torch.Tensor, state: MaskState, steps: int,
                 create_graph: bool = False) -> MaskState:
        """``steps`` Adam steps from ``state``; with ``create_graph`` every step stays differentiable w.r.t. ``x``."""
        if steps == 0:
            return state
        x = x if create_graph else x.detach()
        blurred = gaussian_blur(x, self.blur_sigma)
        keep, m1, m2, t = state.keep, state.m1, state.m2, state.step
        b1, b2, eps = 0.9, 0.999, 1e-8
        with numerics.flush_denormals(self.flush_denormals), torch.enable_grad():
            for _ in range(steps):
                if not keep.requires_grad:
                    keep = keep.detach().requires_grad_(True)
                total = self.loss(x, blurred, target, keep).sum()  # images are independent: sum = per-image grads
                (g,) = torch.autograd.grad(total, keep, create_graph=create_graph)
                t += 1
                m1 = b1 * m1 + (1 - b1) * g
                m2 = b2 * m2 + (1 - b2) * g * g
                # sqrt(v + eps^2) instead of sqrt(v) + eps: finite second derivative where g = 0
                direction = (m1 / (1 - b1**t)) / torch.sqrt(m2 / (1 - b2**t) + eps**2)
                keep = (keep - self.lr * direction).clamp(0, 1)
                if not create_graph:
                    keep, m1, m2 = keep.detach(), m1.detach(), m2.detach()
        return MaskState(keep, m1, m2, t)

    def maps_of(self, state: MaskState, size: tuple[int, int]) -> torch.Tensor:
        """Saliency ``1 - keep`` upsampled to ``size``: (B,1,H,W) in [0,1]."""
        return 1 - self.upsample(state.keep, size)

    def _explain(self, x: torch.Tensor, target, create_graph: bool) -> Explanation:
        with torch.enable_grad():
            logits = model_logits(self.model, x)
        t = resolve_target(target, logits)
        unroll = self.unroll if create_graph else 0
        state = self.optimise(x, t, self.init_state(x), self.steps - unroll)
        state = self.optimise(x, t, state, unroll, create_graph=True)
        return Explanation(logits, self.maps_of(state, tuple(x.shape[-2:])))
