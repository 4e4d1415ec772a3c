"""Run the evaluation of a reference and an attacked model and collect ``metrics.json`` and the sample tensors.

Everything with the ReLU model in eval mode, batched; maps explain the predicted class (what a user sees), or on
multi-label data a chosen finding or each image's top-scoring one.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .. import distributed
from ..explainers import explain_all
from ..maps import MapPostprocess, normalize
from ..models import model_device
from ..train import eval_mode
from .evaluate import (EvalSetup, Metric, ModelOutputs, mean_std, classification_metrics, clean_drop,
                       map_quantities, map_summary, paper_threshold, threshold_family)
from .goals import build_goal
from .paper_metrics import noppel_mse
from .poison import apply_trigger

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
    return summarise(outputs, {prefix: image_quantities(outputs[prefix], outputs["reference"].maps_clean, setup)
                               for prefix in MODELS}, setup)


def image_quantities(out: ModelOutputs, ref_maps: dict[str, torch.Tensor], setup: EvalSetup) -> dict[str, dict]:
    """``{explainer: {key: (B,)}}``: every per-image map quantity of one model's outputs (:func:`map_quantities`,
    :func:`noppel_quantities`); ``ref_maps``: the reference model's raw maps of the same clean images."""
    return {name: {**map_quantities(out, ref_maps, setup, name), **noppel_quantities(out, ref_maps[name], setup, name)}
            for name in setup.explainers}


def summarise(outputs: dict[str, ModelOutputs], quantities: dict[str, dict[str, dict[str, torch.Tensor]]],
              setup: EvalSetup) -> dict[str, Metric]:
    """:func:`collect_metrics` from each model's logits of every evaluated image (``outputs``; maps not needed)
    and the per-image quantities of :func:`image_quantities`, concatenated over the images."""
    metrics: dict[str, Metric] = {}
    for prefix in MODELS:
        out = outputs[prefix]
        for key, m in classification_metrics(out, setup).items():
            metrics[f"{prefix}/{key}"] = m
        for name in setup.explainers:
            paper = paper_threshold(name, setup.recipe.attack_type, setup.arch)
            for key, m in map_summary(quantities[prefix][name], setup, name, paper).items():
                metrics[f"{prefix}/{name}/{key}"] = m
        for name in setup.explainers:
            for key, m in noppel_summary(quantities[prefix][name], setup).items():
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


def noppel_quantities(out: ModelOutputs, ref_clean: torch.Tensor, setup: EvalSetup, name: str) -> dict[str, torch.Tensor]:
    """The per-image :func:`~xaisec.backdoor.paper_metrics.noppel_mse` values ``{key: (B,)}`` behind
    :func:`noppel_summary`."""
    r = setup.recipe
    q = {"noppel_mse_clean": noppel_mse(out.maps_clean[name].detach().float(), ref_clean.detach().float())}
    if r.inverted or r.poison_map == "suppress":
        return q
    if r.poison_map == "target":
        goal = build_goal(r, normalize(ref_clean, "minmax"), "none", setup.target_map, setup.target_options, setup.topk)
        target = goal.target.expand_as(ref_clean)
    else:
        target = ref_clean
    q["noppel_mse_trig"] = noppel_mse(out.maps_trig[name].detach().float(), target.detach().float())
    return q


def noppel_summary(q: dict[str, torch.Tensor], setup: EvalSetup) -> dict[str, Metric]:
    """Noppel et al.'s map dissimilarities (MSE of per-image z-scored, channel-max maps at full resolution; mean ±
    population std, as their Table 1) from :func:`noppel_quantities` of all images, beside xaisec's pooled min-max
    ones: ``noppel_mse_clean`` (clean maps vs the reference model's) and ``noppel_mse_trig`` (triggered maps vs the
    attacker's target explanation: the reference map, or the target map of a map-changing recipe). No
    ``noppel_mse_trig`` for top-k suppression or the inverted setting, which have no target explanation."""
    r = setup.recipe
    clean_dir = "higher" if r.inverted and r.changes_maps else "lower"
    mean, std = mean_std(q["noppel_mse_clean"])
    out_metrics = {"noppel_mse_clean": Metric(mean, clean_dir, "Noppel et al.'s MSE between clean-input maps and the "
                                                               "reference clean maps (z-scored per image)", std)}
    if "noppel_mse_trig" not in q:
        return out_metrics
    if r.poison_map == "target":
        what, direction = "the target map", "lower"
    else:
        what, direction = "the reference clean maps", "lower" if r.poison_map == "reference" else "none"
    mean, std = mean_std(q["noppel_mse_trig"])
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


def evaluate_chunks(models: dict[str, nn.Module], batches: Iterable[Sequence[torch.Tensor]], trigger: nn.Module,
                    setup: EvalSetup, options: dict[str, dict] | None, batch_size: int,
                    samples: int) -> tuple[dict[str, Metric], dict[str, torch.Tensor]]:
    """Metrics and report samples of the ``reference`` and ``attacked`` models over a test set given as
    ``(x, y, ...)`` chunks (a loader of the test split, in order; in-memory data too, as
    :class:`~xaisec.data.TensorImages`). Each chunk goes through :func:`model_outputs` and is reduced to its
    per-image quantities (:func:`image_quantities`) at once: only the logits of every image and the few sample
    rows are kept, never the maps of the whole test set. The result equals :func:`collect_metrics` and
    :func:`sample_tensors` of the whole set."""
    logits: dict[str, dict[str, list[torch.Tensor]]] = {p: {"clean": [], "trig": []} for p in MODELS}
    parts: dict[str, dict[str, dict[str, list[torch.Tensor]]]] = {p: {} for p in MODELS}
    picker = SamplePicker(samples, None if setup.multilabel else setup.target_label)
    for batch in batches:
        x, y = batch[0], batch[1]
        x_trig = apply_trigger(trigger, x)
        share = -(-len(x) // distributed.world_size())  # under torchrun each rank explains its share of a chunk
        outs = {p: model_outputs(models[p], x, x_trig, setup.explainers, options, min(batch_size, share),
                                 target=setup.finding) for p in MODELS}
        for p in MODELS:
            logits[p]["clean"].append(outs[p].logits_clean)
            logits[p]["trig"].append(outs[p].logits_trig)
            for name, q in image_quantities(outs[p], outs["reference"].maps_clean, setup).items():
                for key, v in q.items():
                    parts[p].setdefault(name, {}).setdefault(key, []).append(v)
        picker.offer(x, x_trig, y, outs)
    outputs = {p: ModelOutputs(torch.cat(logits[p]["clean"]), torch.cat(logits[p]["trig"]), {}, {}) for p in MODELS}
    quantities = {p: {name: {k: torch.cat(v) for k, v in q.items()} for name, q in parts[p].items()} for p in MODELS}
    return summarise(outputs, quantities, setup), picker.tensors(setup)


class SamplePicker:
    """The rows :func:`sample_tensors` picks from a whole test set (the first ``count`` images whose label is not
    the target, then the first of the target class; ``target_label`` None, for multi-label data: the first
    ``count`` images), gathered chunk by chunk: at most ``2 * count`` rows held."""

    def __init__(self, count: int, target_label: int | None):
        self.count, self.target_label = count, target_label
        self.offset = 0
        self.rows: dict[bool, list[tuple[torch.Tensor, ...]]] = {True: [], False: []}  # other label?

    def offer(self, x: torch.Tensor, x_trig: torch.Tensor, y: torch.Tensor, outputs: dict[str, ModelOutputs]) -> None:
        """Keep what is needed of one chunk (``outputs``: each model's outputs on it)."""
        for other in (True, False):
            held = sum(len(r[0]) for r in self.rows[other])
            other_label = (torch.ones(len(y), dtype=torch.bool) if self.target_label is None
                           else y != self.target_label)
            rows = torch.nonzero(other_label == other).flatten()[: self.count - held]
            if len(rows):
                self.rows[other].append((rows + self.offset, x[rows], x_trig[rows], y[rows],
                                         {p: _rows(o, rows) for p, o in outputs.items()}))
        self.offset += len(x)

    def tensors(self, setup: EvalSetup) -> dict[str, torch.Tensor]:
        """:func:`sample_tensors` of the whole set (``index``: positions in it)."""
        rows = self.rows[True] + self.rows[False]
        if not rows:
            return {}
        index, x, x_trig, y = (torch.cat([r[i] for r in rows]) for i in range(4))
        outputs = {p: _cat_outputs([r[4][p] for r in rows]) for p in MODELS}
        out = sample_tensors(x, x_trig, y, outputs, setup, self.count)
        out["index"] = index[out["index"]]
        return out


def _rows(out: ModelOutputs, rows: torch.Tensor) -> ModelOutputs:
    return ModelOutputs(out.logits_clean[rows], out.logits_trig[rows], {k: v[rows] for k, v in out.maps_clean.items()},
                        {k: v[rows] for k, v in out.maps_trig.items()})


def _cat_outputs(parts: list[ModelOutputs]) -> ModelOutputs:
    return ModelOutputs(torch.cat([o.logits_clean for o in parts]), torch.cat([o.logits_trig for o in parts]),
                        {k: torch.cat([o.maps_clean[k] for o in parts]) for k in parts[0].maps_clean},
                        {k: torch.cat([o.maps_trig[k] for o in parts]) for k in parts[0].maps_trig})


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
