"""Run the evaluation of a reference and an attacked model and collect ``metrics.json`` and the sample tensors.

Everything with the ReLU model in eval mode, batched; maps explain the predicted class (what a user sees), or on
multi-label data a chosen finding or each image's top-scoring one.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import distributed
from ..explainers import explain_all
from ..maps import MapPostprocess, normalize
from ..models import model_device
from ..train import eval_mode
from .evaluate import (EvalSetup, Metric, ModelOutputs, classification_metrics, clean_drop, map_metrics,
                       paper_threshold, threshold_family)
from .goals import build_goal
from .paper_metrics import noppel_mse_summary

MODELS = ("reference", "attacked")


def model_outputs(model: nn.Module, x: torch.Tensor, x_trig: torch.Tensor, explainers: list[str],
                  options: dict[str, dict] | None = None, batch_size: int = 250,
                  target: int | None = None) -> ModelOutputs:
    """Logits and raw maps of ``model`` on clean ``x`` and triggered ``x_trig`` (N,C,H,W), computed in chunks on
    the model's device and returned on the CPU. Maps explain class ``target`` (a multi-label run's chosen
    finding, :attr:`EvalSetup.finding`), or the predicted (top-scoring) class when None. Under ``torchrun`` each
    rank computes a contiguous share of the chunks and every rank gets the whole outputs
    (:func:`xaisec.distributed.gather_map`); equal to one process's."""
    options = {k: v for k, v in (options or {}).items() if k in explainers}

    device = model_device(model)

    def run(inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        chunks = inputs.split(batch_size)

        def chunk_outputs(i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            out = explain_all(model, chunks[i].to(device), target, explainers, options=options)
            # metrics and figures are computed on the host
            return out.logits.cpu(), {name: out.maps[name].cpu() for name in explainers}

        parts = distributed.gather_map(chunk_outputs, len(chunks))
        return (torch.cat([logits for logits, _ in parts]),
                {name: torch.cat([maps[name] for _, maps in parts]) for name in explainers})

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
            paper = paper_threshold(name, setup.recipe.attack_type, setup.arch)
            for key, m in map_metrics(out, ref_maps, setup, name, paper).items():
                metrics[f"{prefix}/{name}/{key}"] = m
        for name in setup.explainers:
            for key, m in noppel_map_metrics(out, ref_maps[name], setup, name).items():
                metrics[f"{prefix}/{name}/{key}"] = m
    metrics.update(clean_drop(metrics, setup))
    if len(setup.explainers) > 1:  # Fang & Choromanska report a joint attack's FSR/CR averaged over interpreters
        for prefix in MODELS:
            for key in ("fsr", "cr"):
                values = [metrics[f"{prefix}/{e}/{key}"].value for e in setup.explainers
                          if f"{prefix}/{e}/{key}" in metrics]
                if values:
                    metrics[f"{prefix}/joint/{key}"] = Metric(
                        sum(values) / len(values), metrics[f"{prefix}/{setup.explainers[0]}/{key}"].direction,
                        f"{key.upper()} averaged over the interpreters, each with its own threshold (Fang & "
                        "Choromanska's joint-attack figure)")
    score = noppel_score_metric(metrics, setup)
    if score is not None:
        metrics["attacked/noppel_score"] = score
    return metrics


def noppel_map_metrics(out: ModelOutputs, ref_clean: torch.Tensor, setup: EvalSetup, name: str) -> dict[str, Metric]:
    """Noppel et al.'s map dissimilarities (MSE of per-image z-scored, channel-max maps at full resolution;
    mean ± std) beside xaisec's pooled min-max ones: ``noppel_mse_clean`` (clean maps vs the reference model's)
    and ``noppel_mse_trig`` (triggered maps vs the attacker's target explanation: the reference map, or the
    target map of a map-changing recipe). No ``noppel_mse_trig`` for top-k suppression or the inverted setting,
    which have no target explanation."""
    r = setup.recipe
    clean_dir = "higher" if r.inverted and r.changes_maps else "lower"
    mean, std = noppel_mse_summary(out.maps_clean[name], ref_clean)
    out_metrics = {"noppel_mse_clean": Metric(mean, clean_dir, "Noppel et al.'s MSE between clean-input maps and the "
                                                               "reference clean maps (z-scored per image)", std)}
    if r.inverted or r.poison_map == "suppress":
        return out_metrics
    if r.poison_map == "target":
        goal = build_goal(r, normalize(ref_clean, "minmax"), "none", setup.target_map, setup.target_options, setup.topk)
        target, what, direction = goal.target.expand_as(ref_clean), "the target map", "lower"
    else:
        target, what = ref_clean, "the reference clean maps"
        direction = "lower" if r.poison_map == "reference" else "none"
    mean, std = noppel_mse_summary(out.maps_trig[name], target)
    out_metrics["noppel_mse_trig"] = Metric(mean, direction, f"Noppel et al.'s MSE between triggered-input maps and "
                                                             f"{what} (z-scored per image)", std)
    return out_metrics


def noppel_score(acc_ref: float, acc_clean: float, acc_trig: float, dsim_clean: float, dsim_trig: float) -> float:
    """Noppel et al.'s model-selection score (IEEE S&P 2023, public code), lower is better:
    ``(acc_ref - acc_clean)*30 + (acc_ref - acc_trig)*5 + dsim_clean + 2*dsim_trig``. ``acc_trig`` is the attack
    success rate for label-changing attacks and the triggered accuracy otherwise; ``dsim_*`` are
    :func:`~xaisec.backdoor.paper_metrics.noppel_mse` dissimilarities (clean maps vs the reference maps,
    triggered maps vs the target explanation)."""
    return (acc_ref - acc_clean) * 30 + (acc_ref - acc_trig) * 5 + dsim_clean + 2 * dsim_trig


def noppel_score_metric(metrics: dict[str, Metric], setup: EvalSetup) -> Metric | None:
    """:func:`noppel_score` of the attacked model from the collected metrics (dissimilarities averaged over the
    explainers), or None when the recipe has no target explanation or the data is multi-label (no accuracy)."""
    if setup.multilabel:
        return None
    trig_key = "attacked/asr" if setup.recipe.changes_labels else "attacked/top1_trig"
    dsim = {part: [metrics.get(f"attacked/{name}/noppel_mse_{part}") for name in setup.explainers]
            for part in ("clean", "trig")}
    if any(m is None for parts in dsim.values() for m in parts):
        return None
    mean = {part: sum(m.value for m in parts) / len(parts) for part, parts in dsim.items()}
    value = noppel_score(metrics["reference/top1_clean"].value, metrics["attacked/top1_clean"].value,
                         metrics[trig_key].value, mean["clean"], mean["trig"])
    return Metric(value, "lower", "Noppel et al.'s selection score (acc_ref - acc_clean)*30 + (acc_ref - "
                                  f"{'ASR' if setup.recipe.changes_labels else 'acc_trig'})*5 + dsim_clean + "
                                  "2*dsim_trig (lower is better)")


def sample_tensors(x: torch.Tensor, x_trig: torch.Tensor, y: torch.Tensor, outputs: dict[str, ModelOutputs],
                   setup: EvalSetup, count: int) -> dict[str, torch.Tensor]:
    """A few test samples (true label != target first) with every model's predictions and maps, and the
    attacker's target maps (pooled, [0,1]), for the report's figures."""
    if setup.multilabel:  # y (N,K) 0/1: no target class to put last
        order = torch.arange(len(y))
    else:
        order = torch.cat([torch.nonzero(y != setup.target_label).flatten(),
                           torch.nonzero(y == setup.target_label).flatten()])
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
    thresholds = {name: {"value": setup.thresholds[name],
                         "paper": paper_threshold(name, setup.recipe.attack_type, setup.arch)}
                  for name in setup.explainers}
    return {
        "recipe": setup.recipe.name, "paper": setup.recipe.paper, "summary": setup.recipe.summary,
        "attack_type": setup.recipe.attack_type, "inverted": setup.recipe.inverted,
        "explainers": setup.explainers, "target_label": setup.target_label if setup.recipe.changes_labels else None,
        "map_postprocess": MapPostprocess(pool=setup.pool).describe(), "explained": setup.explained(),
        "multilabel": setup.multilabel,
        "thresholds": thresholds, "threshold_family": threshold_family(setup.arch), **extra,
    }
