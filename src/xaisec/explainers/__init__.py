"""Explainers: a registry, ``build(name, model, layer=None, **options)`` and joint ``explain``.

>>> maps = explain(model, x, y, methods=["gradcam", "simplegrad", "vbp"])   # one forward, one backward
>>> maps["gradcam"].shape   # (B,1,H,W), raw
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import XaisecError
from ..train import batchnorm_stats_kept
from ..validation import check_images, match_model_dtype
from .base import EXPLAINERS, Explainer, Explanation, PassRequest, SinglePassExplainer, recording, run_pass
from .cam import CAM, GradCAM, GradCAMPlusPlus
from .gradient import GradientShap, InputXGradient, IntegratedGradients, SimpleGrad, SmoothGrad, draw_background
from .mask import MaskState, MeaningfulPerturbation
from .rts import FeatureSaliencyNet, RealTimeSaliency, SaliencyNet, encoder_prototypes
from .vbp import VisualBackProp



def build(name: str | Explainer, model: nn.Module, layer: str | None = None, **options) -> Explainer:
    """Build the explainer registered as ``name`` for ``model``; ``layer`` applies to layer-based methods."""
    if isinstance(name, Explainer):
        return name
    cls = EXPLAINERS.get(name)
    params = inspect.signature(cls.__init__).parameters
    if layer is not None:
        if "layer" not in params:
            raise XaisecError(f"explainer {name!r} does not take a layer; drop layer={layer!r}")
        options["layer"] = layer
    EXPLAINERS.check_options(name, options, given=("model",))
    return cls(model, **options)


@dataclass
class JointExplanation:
    """``logits`` (B,K) of the shared forward pass and ``maps`` {method name: (B,1,H,W)}."""

    logits: torch.Tensor
    maps: dict[str, torch.Tensor]


def explain_all(model: nn.Module, x: torch.Tensor, target=None, methods: Sequence[str | Explainer] = ("gradcam",),
                *, create_graph: bool = False, options: dict[str, dict] | None = None,
                keep_batchnorm_stats: bool = True) -> JointExplanation:
    """Maps of several methods for one batch. All single-pass methods share one forward pass and at most
    one backward pass; multi-sample methods (ig, smoothgrad, gradshap) run their own batched passes.

    ``options`` maps a method name to its constructor options, e.g. ``{"gradcam": {"layer": "features.3"}}``.
    Train-mode BatchNorm layers keep their running statistics unless ``keep_batchnorm_stats=False`` (training
    objectives, whose explained forward pass is the training pass). ``x`` of another float dtype than the model's
    is cast to it, with a warning.
    """
    options = options or {}
    unknown = set(options) - {m if isinstance(m, str) else m.name for m in methods}
    if unknown:
        raise XaisecError(f"options given for {sorted(unknown)}, which are not among methods {list(methods)}")
    explainers = {(m if isinstance(m, str) else m.name): build(m, model, **options.get(m, {}) if isinstance(m, str) else {})
                  for m in methods}
    if not explainers:
        raise XaisecError("explain needs at least one method")
    check_images(x, allow_flat=not any(e.needs_images for e in explainers.values()))
    x = match_model_dtype(x, model)
    with torch.enable_grad(), (batchnorm_stats_kept(model) if keep_batchnorm_stats else contextlib.nullcontext()):
        # explainers differentiate, also when called under torch.no_grad()
        logits, maps = _joint_maps(model, x, target, explainers, create_graph)
    if not create_graph:
        logits, maps = logits.detach(), {n: m.detach() for n, m in maps.items()}
    return JointExplanation(logits, maps)


def _joint_maps(model: nn.Module, x: torch.Tensor, target, explainers: dict[str, Explainer], create_graph: bool
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    shared = {n: e for n, e in explainers.items() if isinstance(e, SinglePassExplainer)}
    maps: dict[str, torch.Tensor] = {}
    logits = None
    if shared:
        request = PassRequest()
        for e in shared.values():
            request = request.merge(e.request())
        result = run_pass(model, x, target, request, create_graph)
        logits, target = result.logits, result.target
        maps.update({n: e.maps_from(result) for n, e in shared.items()})
    for name, e in explainers.items():
        if name not in maps:
            out = e._explain(x, target, create_graph)
            logits = out.logits if logits is None else logits
            maps[name] = out.maps
    return logits, {n: maps[n] for n in explainers}  # caller's order


def explain(model: nn.Module, x: torch.Tensor, target=None, methods: Sequence[str | Explainer] = ("gradcam",),
            **kwargs) -> dict[str, torch.Tensor]:
    """``{method: maps (B,1,H,W)}`` for several methods; see :func:`explain_all`."""
    return explain_all(model, x, target, methods, **kwargs).maps


def list_explainers() -> list[str]:
    return EXPLAINERS.names()


__all__ = ["CAM", "EXPLAINERS", "Explainer", "Explanation", "GradCAM", "GradCAMPlusPlus", "GradientShap",
           "InputXGradient", "IntegratedGradients", "JointExplanation", "MaskState", "MeaningfulPerturbation",
           "FeatureSaliencyNet", "RealTimeSaliency", "SaliencyNet", "SimpleGrad", "SmoothGrad", "VisualBackProp",
           "build", "draw_background", "encoder_prototypes", "explain", "explain_all", "list_explainers", "recording",
           "run_pass"]
