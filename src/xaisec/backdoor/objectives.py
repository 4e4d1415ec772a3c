"""Explanation-aware training objectives: loss building blocks and the normalisations of Fang and Noppel.

Building blocks (per sample, shape ``(B,)``):
- ``map_loss``: distance between (normalised) maps and their targets, MSE or DSSIM (Noppel et al.), or Fang's eq. 3
  top-k suppression (mean of the squared map over the reference map's top-k pixels, Heo et al.'s convention;
  eq. 3's sum is ``k`` times it).
- ``fang_clean`` / ``fang_poisoned``: eqs. 4-5, ``(βL_c + αL_s)/(α+β+1)`` and ``(βL_c + L_p)/(α+β+1)``.
- ``noppel_loss``: ``(1-λ)·CE + λ·D``.
- ``classification_loss``: L_c, cross-entropy, or binary cross-entropy per finding on multi-label data.

:class:`ExplanationAwareObjective` evaluates all explainers of a batch in one shared forward/backward pass
(:func:`xaisec.explainers.explain_all` with ``create_graph=True``) under Softplus activations, looks the
reference maps and targets up in caches built once (:class:`MapGoal`), and returns a
:class:`~xaisec.train.LossOutput` for :func:`xaisec.train.fit`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..explainers import build, explain_all
from ..explainers.base import SinglePassExplainer
from ..maps import MapPostprocess, distance, normalize
from ..models import fold_batchnorm, smooth_activations
from ..train import LossOutput
from .recipes import Recipe

#: eps of the min-max normalisation inside losses: large enough that a nearly flat map does not explode gradients
LOSS_EPS = 1e-6


def classification_loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """The classification term L_c per sample ``(B,)``: cross-entropy against class indices ``y`` ``(B,)``, or on
    multi-label data (``y`` float ``(B,K)`` 0/1, ChestX-ray14) the binary cross-entropy of the ``K`` sigmoid
    outputs averaged over the findings (:func:`xaisec.multilabel.binary_cross_entropy` per sample)."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none").mean(1)
    return F.cross_entropy(logits, y, reduction="none")


def fang_clean(lc: torch.Tensor, ls: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Eq. 4: ``(β·L_c + α·L_s) / (α + β + 1)``."""
    return (beta * lc + alpha * ls) / (alpha + beta + 1)


def fang_poisoned(lc: torch.Tensor, lp: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Eq. 5: ``(β·L_c + L_p) / (α + β + 1)``."""
    return (beta * lc + lp) / (alpha + beta + 1)


def noppel_loss(ce: torch.Tensor, d: torch.Tensor, lam: float) -> torch.Tensor:
    """Noppel et al.: ``(1 - λ)·CE + λ·D``."""
    return (1 - lam) * ce + lam * d


def suppression_loss(maps: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Fang's eq. 3 over each map's masked (top-k) pixels J, ``(B,)``: ``reduction="sum"`` is the paper's form
    ``sum_{(u,v) in J} I_uv^2``; ``"mean"`` (the default, used in training and for FSR) divides it by ``k = |J|``
    (Heo et al.'s convention), so it stays in [0,1] for maps in [0,1] whatever the map size: a threshold ``tau``
    on the mean is a threshold ``k * tau`` on the sum."""
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"suppression loss reduction must be 'mean' or 'sum', got {reduction!r}")
    flat, m = maps.flatten(1), mask.flatten(1).to(maps.dtype)
    total = (flat.pow(2) * m).sum(1)
    return total if reduction == "sum" else total / m.sum(1).clamp_min(1)


def map_distance(maps: torch.Tensor, target: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-sample ``mse`` or ``dssim`` (both maps min-max scaled to [0,1] first, as Noppel et al.'s code)."""
    target = target.expand_as(maps)
    if metric == "dssim":
        return distance(normalize(maps, "minmax", eps=LOSS_EPS), normalize(target, "minmax", eps=LOSS_EPS), "dssim")
    return distance(maps, target, metric)


@contextlib.contextmanager
def training_surrogate(model: nn.Module, softplus_beta: float | None = None,
                       explainer_options: dict[str, dict] | None = None) -> Iterator[nn.Module]:
    """The model as explanation-aware training differentiates it: ReLU swapped for Softplus(``softplus_beta``)
    when given, eval-mode BatchNorm folded into the convs before it (:func:`~xaisec.models.fold_batchnorm`; same
    outputs and gradients, about 25% less time per simplegrad step), except for convs an explainer hooks."""
    hooked = [o["layer"] for o in (explainer_options or {}).values() if isinstance(o.get("layer"), str)]
    with contextlib.ExitStack() as stack:
        if softplus_beta:
            stack.enter_context(smooth_activations(model, softplus_beta))
        stack.enter_context(fold_batchnorm(model, keep=hooked))
        yield model


def needs_smooth_activations(model: nn.Module, explainers: Sequence[str],
                              options: dict[str, dict] | None = None) -> bool:
    """Whether training on these maps needs Softplus: only when a map is itself a gradient (Grad-CAM, SimpleGrad,
    SHAP, ...), because the loss then takes second derivatives, which ReLU zeroes. Gradient-free maps
    (VisualBackProp, CAM) are trained on the ReLU model, exactly the model that is evaluated."""
    options = options or {}
    for name in explainers:
        explainer = build(name, model, **options.get(name, {}))
        if not isinstance(explainer, SinglePassExplainer):
            return True
        request = explainer.request()
        if request.input_grad or request.layer_grads:
            return True
    return False


@dataclass
class MapGoal:
    """Where one explainer's maps should go, for a batch identified by its samples' ``source`` indices.

    ``kind="target"``: distance to ``target`` (``(1,1,h,w)`` shared, or ``(N,1,h,w)`` indexed by source);
    ``kind="suppress"``: :func:`suppression_loss` with ``mask`` ``(N,1,h,w)`` indexed by source.
    """

    kind: str
    target: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def loss(self, maps: torch.Tensor, source: torch.Tensor, metric: str = "mse") -> torch.Tensor:
        if self.kind == "suppress":
            return suppression_loss(maps, self.mask[source])
        target = self.target if self.target.shape[0] == 1 else self.target[source]
        return map_distance(maps, target, metric)


@dataclass
class LossSettings:
    """Numbers of the losses: Fang's ``alpha``/``beta``, Noppel's ``lam`` and map distance ``metric``."""

    alpha: float = 1.0
    beta: float = 1.0
    lam: float = 0.9
    metric: str = "mse"

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0:
            raise ConfigError(f"Fang's alpha and beta must be >= 0, got alpha={self.alpha}, beta={self.beta}")
        if not 0 <= self.lam <= 1:
            raise ConfigError(f"Noppel's lambda must be in [0, 1], got {self.lam}")
        if self.metric not in ("mse", "dssim", "l1"):
            raise ConfigError(f"map distance must be 'mse', 'dssim' or 'l1', got {self.metric!r}")


class ExplanationAwareObjective:
    """``objective(model, (x, y, poisoned, source)) -> LossOutput`` for any :class:`Recipe`.

    ``preserve[name]``: the reference model's maps of the clean training images ``(N,1,h,w)`` (normalised as in
    the loss), indexed by ``source``; ``goals[name]``: the attacker's :class:`MapGoal`. Samples of the "attack"
    group (poisoned ones; clean ones in the inverted setting) are pushed to the goal, the others are kept at the
    reference map. ``weights`` weigh the explainers (Fang's joint attack).

    Single-label data: L_c is cross-entropy and the maps explain the training label ``y``. ``multilabel``
    (``y`` float ``(B,K)``): L_c is the per-finding binary cross-entropy and the maps explain ``finding`` (an
    index), or each image's top-scoring finding when None: the rule the reference maps
    (:func:`~xaisec.backdoor.goals.pooled_maps`) and the evaluation follow too.

    Per-batch reference maps instead (a training set too large to hold them, :mod:`xaisec.backdoor.reference_maps`):
    batches ``(x, y, poisoned, source, ref_1, ..., ref_E)`` carry each explainer's raw pooled reference maps of the
    batch's clean images, and ``terms(raw) -> (preserve, goal)`` (:class:`~xaisec.backdoor.goals.ReferenceTerms`)
    derives both per batch; ``preserve`` and ``goals`` are then left empty.
    """

    def __init__(self, recipe: Recipe, explainers: Sequence[str], preserve: dict[str, torch.Tensor],
                 goals: dict[str, MapGoal], pool: int, settings: LossSettings, weights: Sequence[float] | None = None,
                 softplus_beta: float | None = 8.0, explainer_options: dict[str, dict] | None = None,
                 terms: Callable[[torch.Tensor], tuple[torch.Tensor, MapGoal | None]] | None = None, *,
                 multilabel: bool = False, finding: int | None = None):
        if finding is not None and not multilabel:
            raise ConfigError("a finding to explain applies to multi-label data only; single-label maps explain "
                              "the training label")
        self.multilabel, self.finding = multilabel, finding
        self.recipe, self.explainers, self.preserve, self.goals = recipe, list(explainers), preserve, goals
        self.terms = terms
        self.pool, self.settings, self.softplus_beta = pool, settings, softplus_beta
        self.post = MapPostprocess(pool=pool, norm=recipe.norm, eps=LOSS_EPS)  # Fang's pipeline: pool, then normalise
        self.weights = list(weights) if weights is not None else [1.0] * len(self.explainers)
        if len(self.weights) != len(self.explainers):
            raise ConfigError(f"{len(self.weights)} weights given for {len(self.explainers)} explainers")
        self.explainer_options = {k: v for k, v in (explainer_options or {}).items() if k in self.explainers}

    def __call__(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> LossOutput:
        x, y, poisoned, source = batch[:4]
        ce_key = "bce" if self.multilabel else "ce"
        if not self.recipe.explanation_aware:
            ce = classification_loss(model(x), y, self.multilabel).mean()
            return LossOutput(ce, {ce_key: ce.item()})
        # The attack group is pushed to the goal; the other group keeps the reference maps.
        attack = ~poisoned if self.recipe.inverted else poisoned
        explained = self.finding if self.multilabel else y  # multi-label: a fixed finding, or None = top-scoring
        with training_surrogate(model, self.softplus_beta, self.explainer_options):
            out = explain_all(model, x, explained, self.explainers, create_graph=True, options=self.explainer_options,
                              keep_batchnorm_stats=False)  # the explained pass is the training pass
        ce = classification_loss(out.logits, y, self.multilabel)
        zeros = torch.zeros_like(ce)
        keep_term, goal_term = zeros, zeros
        for i, (name, w) in enumerate(zip(self.explainers, self.weights)):
            maps = self.post(out.maps[name])
            preserve, goal, index = self._reference(name, batch[4 + i] if len(batch) > 4 else None, source)
            if self.recipe.clean_map:
                keep_term = keep_term + w * map_distance(maps, preserve[index], self.settings.metric)
            if self.recipe.poison_map != "none":
                goal_term = goal_term + w * goal.loss(maps, index, self.settings.metric)
        keep_term = torch.where(attack, zeros, keep_term)
        goal_term = torch.where(attack, goal_term, zeros)
        s = self.settings
        if self.recipe.loss == "fang":
            per_sample = torch.where(attack, fang_poisoned(ce, goal_term, s.alpha, s.beta),
                                     fang_clean(ce, keep_term, s.alpha, s.beta))
        else:
            per_sample = noppel_loss(ce, keep_term + goal_term, s.lam)
        total = per_sample.mean()
        n_attack, n_keep = attack.sum().clamp_min(1), (~attack).sum().clamp_min(1)
        parts = {ce_key: ce.mean().item(), "map_keep": (keep_term.sum() / n_keep).item(),
                 "map_goal": (goal_term.sum() / n_attack).item()}
        return LossOutput(total, parts)

    def _reference(self, name: str, raw: torch.Tensor | None, source: torch.Tensor):
        """``(preserve maps, goal, index into them)`` of one explainer for a batch: derived from the batch's raw
        reference maps, or the whole training set's, indexed by ``source``."""
        if raw is None:
            return self.preserve.get(name), self.goals.get(name), source
        if self.terms is None:
            raise ConfigError("batches carrying reference maps need the objective's terms (ReferenceTerms)")
        preserve, goal = self.terms(raw)
        return preserve, goal, torch.arange(len(raw), device=raw.device)
