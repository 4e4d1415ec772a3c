"""Reference maps computed once for a fixed image set, and the attacker's map goals built from them.

Explanation-aware fine-tuning compares every step's maps with the reference model's maps of the same clean
images. Those never change, so :func:`pooled_maps` computes them once, batched (see ``benchmarks/training.py``
for the gain over sample-by-sample), and :func:`build_goal` derives each explainer's target from them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from ..explainers import explain_all
from ..maps import MapPostprocess, downsample, normalize, topk_mask
from ..target_maps import target_maps
from ..train import eval_mode
from ..models import model_device
from .objectives import LOSS_EPS, MapGoal, training_surrogate
from .recipes import Recipe


def pooled_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None, explainers: Sequence[str], pool: int,
                *, batch_size: int = 250, softplus_beta: float | None = None,
                options: dict[str, dict] | None = None) -> dict[str, torch.Tensor]:
    """Raw maps ``{name: (N,1,H/pool,W/pool)}`` of ``x`` (N,C,H,W) for ``target`` classes (None: predicted),
    average-pooled and detached, on the model's device; the model in eval mode (BatchNorm folded), with Softplus(``softplus_beta``) if given."""
    batches = ((x[s:s + batch_size], None if target is None else target[s:s + batch_size])
               for s in range(0, len(x), batch_size))
    return concat_pooled_maps(model, batches, explainers, pool, softplus_beta=softplus_beta, options=options)


def concat_pooled_maps(model: nn.Module, batches: Iterable[Sequence[torch.Tensor | None]], explainers: Sequence[str],
                       pool: int, *, softplus_beta: float | None = None,
                       options: dict[str, dict] | None = None) -> dict[str, torch.Tensor]:
    """:func:`iter_pooled_maps` of every ``(x, target, ...)`` batch, concatenated in order: ``{name: (N,1,h,w)}``
    on the model's device."""
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in explainers}
    for maps in iter_pooled_maps(model, batches, explainers, pool, softplus_beta=softplus_beta, options=options):
        for name in explainers:
            chunks[name].append(maps[name])
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def iter_pooled_maps(model: nn.Module, batches: Iterable[Sequence[torch.Tensor | None]], explainers: Sequence[str],
                     pool: int, *, softplus_beta: float | None = None,
                     options: dict[str, dict] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """:func:`pooled_maps` of each ``(x, target, ...)`` batch of a loader (``target`` None: predicted class), one
    ``{name: (B,1,h,w)}`` per batch on the model's device: the reference maps of a streamed training set, batch by
    batch (:mod:`xaisec.backdoor.reference_maps`)."""
    options = {k: v for k, v in (options or {}).items() if k in explainers}
    device = model_device(model)  # maps stay on the model's device: the training objective reads them there
    with eval_mode(model), training_surrogate(model, softplus_beta, options):
        for batch in batches:
            x, target = batch[0], batch[1]
            t = None if target is None else target.to(device)
            out = explain_all(model, x.to(device), t, list(explainers), options=options)
            yield {name: downsample(out.maps[name], pool).detach() for name in explainers}


def build_goal(recipe: Recipe, reference01: torch.Tensor, norm: str, target_map: str | None = None,
               target_options: dict | None = None, topk: float = 0.1) -> MapGoal | None:
    """The attacker's :class:`MapGoal` for one explainer, from the reference maps ``(N,1,h,w)`` in [0,1].

    Target maps are normalised like the maps they are compared with (``norm``), so a z-scored map is compared
    with a z-scored target. ``None`` when the recipe has no map goal (BadNets).
    """
    if recipe.poison_map == "none":
        return None
    if recipe.poison_map == "suppress":
        return MapGoal("suppress", mask=topk_mask(reference01, topk))
    if recipe.poison_map == "reference":
        return MapGoal("target", target=normalize(reference01, norm, eps=LOSS_EPS))
    size = tuple(reference01.shape[-2:])
    target = target_maps(target_map or recipe.target_map, size, reference01, target_options)
    return MapGoal("target", target=normalize(target, norm, eps=LOSS_EPS))


@dataclass(frozen=True)
class ReferenceTerms:
    """What the training objective derives from the reference model's raw pooled maps ``(B,1,h,w)`` of a batch's
    clean images: the map to preserve (normalised like the loss's maps) and the attacker's :class:`MapGoal`
    (:func:`build_goal` on the min-max scaled maps), indexed by position in the batch. Every step of it works per
    image, so it gives the values of computing both once for the whole training set and indexing by ``source``."""

    recipe: Recipe
    target_map: str | None = None
    target_options: dict | None = None
    topk: float = 0.1

    def __call__(self, raw: torch.Tensor) -> tuple[torch.Tensor, MapGoal | None]:
        preserve = MapPostprocess(norm=self.recipe.norm, eps=LOSS_EPS)(raw)
        goal = build_goal(self.recipe, MapPostprocess(norm="minmax", eps=LOSS_EPS)(raw), self.recipe.norm,
                          self.target_map, self.target_options, self.topk)
        return preserve, goal
