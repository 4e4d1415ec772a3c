"""Run the evaluation of a reference and an attacked model and collect ``metrics.json`` and the sample tensors.

Everything with the ReLU model in eval mode, batched; maps explain the predicted class (what a user sees).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..explainers import explain_all
from ..maps import MapPostprocess
from ..models import model_device
from ..train import eval_mode
from .evaluate import EvalSetup, Metric, ModelOutputs, classification_metrics, map_metrics, paper_threshold
from .goals import build_goal

MODELS = ("reference", "attacked")


def model_outputs(model: nn.Module, x: torch.Tensor, x_trig: torch.Tensor, explainers: list[str],
                  options: dict[str, dict] | None = None, batch_size: int = 250) -> ModelOutputs:
    """Logits and raw maps of ``model`` on clean ``x`` and triggered ``x_trig`` (N,C,H,W), computed in chunks on
    the model's device and returned on the CPU."""
    options = {k: v for k, v in (options or {}).items() if k in explainers}

    device = model_device(model)

    def run(inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, maps = [], {name: [] for name in explainers}
        for chunk in inputs.split(batch_size):
            out = explain_all(model, chunk.to(device), None, explainers, options=options)
            logits.append(out.logits.cpu())  # metrics and figures are computed on the host
            for name in explainers:
                maps[name].append(out.maps[name].cpu())
        return torch.cat(logits), {name: torch.cat(parts) for name, parts in maps.items()}

    with eval_mode(model):
        logits_clean, maps_clean = run(x)
        logits_trig, maps_trig = run(x_trig)
    return ModelOutputs(logits_clean, logits_trig, maps_clean, maps_trig)


def collect_metrics(outputs: dict[str, ModelOutputs], setup: EvalSetup) -> dict[str, Metric]:
    """``{"reference/top1_clean": Metric, "attacked/gradcam/fsr": Metric, ...}`` for both models."""
    metrics: dict[str, Metric] = {}
    ref_maps = outputs["reference"].maps_clean
    for prefix in MODELS:
        out = outputs[prefix]
        for key, m in classification_metrics(out, setup).items():
            metrics[f"{prefix}/{key}"] = m
        for name in setup.explainers:
            paper = paper_threshold(name, setup.recipe.attack_type)
            for key, m in map_metrics(out, ref_maps, setup, name, paper).items():
                metrics[f"{prefix}/{name}/{key}"] = m
    drop = metrics["reference/top1_clean"].value - metrics["attacked/top1_clean"].value
    metrics["attacked/top1_drop"] = Metric(drop, "lower", "clean Top-1 of the reference model minus that of the "
                                                          "attacked model (percentage points / 100)")
    return metrics


def sample_tensors(x: torch.Tensor, x_trig: torch.Tensor, y: torch.Tensor, outputs: dict[str, ModelOutputs],
                   setup: EvalSetup, count: int) -> dict[str, torch.Tensor]:
    """A few test samples (true label != target first) with every model's predictions and maps, and the
    attacker's target maps (pooled, [0,1]), for the report's figures."""
    order = torch.cat([torch.nonzero(y != setup.target_label).flatten(), torch.nonzero(y == setup.target_label).flatten()])
    idx = order[:count]
    out: dict[str, torch.Tensor] = {"x": x[idx], "x_trig": x_trig[idx], "y": y[idx], "index": idx,
                                    "trigger_mask": setup.trigger_mask.to(torch.uint8)}
    for prefix in MODELS:
        o = outputs[prefix]
        out[f"pred/{prefix}/clean"] = o.logits_clean[idx].argmax(1)
        out[f"pred/{prefix}/trig"] = o.logits_trig[idx].argmax(1)
        for name in setup.explainers:
            out[f"maps/{prefix}/{name}/clean"] = o.maps_clean[name][idx]
            out[f"maps/{prefix}/{name}/trig"] = o.maps_trig[name][idx]
    for name in setup.explainers:
        ref01 = MapPostprocess(pool=setup.pool)(outputs["reference"].maps_clean[name][idx])
        goal = build_goal(setup.recipe, ref01, "minmax", setup.target_map, setup.target_options, setup.topk)
        if goal is not None:
            target = goal.mask.float() if goal.kind == "suppress" else goal.target
            out[f"target/{name}"] = target.expand(len(idx), *target.shape[1:]).contiguous()
    return {k: v.detach().contiguous() for k, v in out.items()}


def context_info(setup: EvalSetup, extra: dict[str, Any]) -> dict[str, Any]:
    """What ``metrics.json`` says about a backdoor run besides its metrics: recipe, explainers, thresholds (with
    the paper's values), the map post-processing, and ``extra`` (trigger, dataset, ...)."""
    thresholds = {name: {"value": setup.thresholds[name], "paper": paper_threshold(name, setup.recipe.attack_type)}
                  for name in setup.explainers}
    return {
        "recipe": setup.recipe.name, "paper": setup.recipe.paper, "summary": setup.recipe.summary,
        "attack_type": setup.recipe.attack_type, "inverted": setup.recipe.inverted,
        "explainers": setup.explainers, "target_label": setup.target_label if setup.recipe.changes_labels else None,
        "map_postprocess": MapPostprocess(pool=setup.pool).describe(),
        "thresholds": thresholds, **extra,
    }
