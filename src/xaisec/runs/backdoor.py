"""The ``backdoor`` experiment kind: explanation-aware backdoors (Fang & Choromanska, AAAI 2022; Noppel et al.,
IEEE S&P 2023; Latka et al.) from one config.

``prepare`` loads the data, builds the model, trigger and explainers once on two images (every user mistake
surfaces there, before the run directory exists). Stages: ``reference`` (train or reuse the clean model) ->
``attacked`` (fine-tune from it, ``w <- w_ref``, on clean plus poisoned samples; checkpointed every epoch) ->
``evaluation`` (the ReLU model on the held-out split: metrics and the report's sample tensors).

Multi-label data (ChestX-ray14, Fang & Choromanska's X-ray rows) runs the label-keeping recipes: L_c is binary
cross-entropy, every map explains ``attack.finding`` (or each image's top-scoring finding), and the evaluation
reports AUROC per finding instead of Top-1/ASR; recipes that relabel poisoned images need single-label data.

The data are ``Dataset``s (:func:`~xaisec.runs.common.open_run_data`): streamed from disk (``data.stream``) or in
memory as :class:`~xaisec.data.TensorImages`, through the same code: poisoning is a
:class:`~xaisec.backdoor.poison.PoisonedStream` read by a loader, reference maps come per batch
(``attack.reference_maps``), and the evaluation runs over chunks of the test split.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..backdoor.config import BackdoorConfig
from ..backdoor.evaluate import EvalSetup, default_threshold
from ..backdoor import reference_maps as refmaps
from ..backdoor.goals import ReferenceTerms, build_goal, concat_pooled_maps
from ..backdoor.paper_metrics import split_test_halves
from ..backdoor.objectives import ExplanationAwareObjective, LossSettings, needs_smooth_activations
from ..backdoor.poison import PoisonedStream, TriggerBatches, apply_trigger
from ..backdoor.recipes import Recipe
from ..backdoor.selection import budget, random_select, rd_select_dataset
from ..backdoor.results import context_info, evaluate_chunks, model_outputs
from ..data import ImageRows, StreamingData, cut, stack_images
from ..data.loader import DeviceBatches
from ..errors import ConfigError, DataError, XaisecError
from ..explainers import EXPLAINERS, explain_all
from ..maps import MapPostprocess
from ..models import model_device
from ..multilabel import NO_AUROC, defined_findings, label_accuracy, resolve_finding
from ..records import Metric
from ..train import eval_mode
from ..triggers import build_trigger
from .artifacts import Artifact
from .checkpoint import TrainingStage, schedule
from .common import (TrainedModel, check_reference_files, load_reference_start, model_factory, open_run_data,
                     run_loader, train_reference, training_log)
from .runner import Experiment, RunContext, Stage, register_experiment

log = logging.getLogger(__name__)


@dataclass
class BackdoorInputs:
    """Everything checked before any training."""

    data: StreamingData
    recipe: Recipe
    trigger: nn.Module
    make_model: Callable[[], nn.Module]
    setup: EvalSetup


@dataclass
class PoisonChoice(Artifact):
    """Stage ``poisoning``: the indices of the training images that are poisoned (empty: drawn at random by the
    poisoning itself, the papers' default) and, for RD selection, the candidates' mean RD score per round."""

    indices: torch.Tensor
    mean_rd: list[float] = field(default_factory=list)


@dataclass
class Evaluation(Artifact):
    """Stage ``evaluation``: metric records (as dicts), context for the report, and sample tensors for figures."""

    metrics: dict[str, dict]
    context: dict[str, Any]
    samples: dict[str, torch.Tensor] = field(default_factory=dict)


def _options(options: dict[str, dict]) -> dict[str, dict]:
    return {name: dict(opts) for name, opts in options.items()}


def eval_options(cfg: BackdoorConfig, data: StreamingData, explainers: list[str]) -> dict[str, dict]:
    """Each evaluated explainer's options: with ``eval.background_from_data`` what its class draws from the
    training images (:meth:`~xaisec.explainers.Explainer.options_from_data`, seeded by ``seed``; only the drawn
    images are read), overridden by ``eval.explainer_options``."""
    given = cfg.eval.explainer_options
    if not cfg.eval.background_from_data:
        return _options(given)
    rows = ImageRows(data.train)
    return {name: {**EXPLAINERS.get(name).options_from_data(rows, cfg.seed), **given.get(name, {})}
            for name in explainers}


def _post(pool: int) -> MapPostprocess:
    return MapPostprocess(pool=pool, norm="minmax")


def evaluation_split(data: StreamingData, split: str):
    """The evaluated part of the test split (a ``Dataset``): all of it, or its first or second half (Noppel et al.
    select hyperparameters on the first half and report on the second)."""
    if split == "all":
        return data.test
    try:
        part = dict(zip(("first_half", "second_half"), split_test_halves(len(data.test))))[split]
    except XaisecError as exc:
        raise ConfigError(f"eval.split {split!r}: {exc}") from None
    return cut(data.test, part.start, part.stop)


def prepare(cfg: BackdoorConfig) -> BackdoorInputs:
    a = cfg.attack
    check_reference_files(cfg)  # a missing weights file fails before the data is read
    data = open_run_data(cfg)
    if len(data.input_shape) != 3:
        raise DataError(f"the backdoor experiment needs image data; {data.name} is tabular")
    if a.target_label >= data.num_classes:
        raise ConfigError(f"attack.target_label {a.target_label} is not a class of {data.name} "
                          f"(0..{data.num_classes - 1})")
    recipe = a.resolved_recipe()
    finding = check_multilabel(cfg, data, recipe)
    trigger = build_trigger(cfg.trigger.name, **cfg.trigger.options)
    x2 = stack_images(data.train, range(min(2, len(data.train))))  # the first two items: decoding errors show now
    trigger(x2)
    make_model = model_factory(cfg, data)
    model = make_model()
    load_reference_start(model, cfg)
    try:
        with eval_mode(model):
            for options in (a.explainer_options, eval_options(cfg, data, list(recipe.explainers))):
                out = explain_all(model, x2, None, list(recipe.explainers), options=_options(options))
            for name in recipe.explainers:
                _post(a.pool)(out.maps[name])
    except XaisecError as exc:
        raise ConfigError(f"attack.explainers {list(recipe.explainers)} do not fit {cfg.model.arch} on "
                          f"{data.name}: {exc}") from None
    thresholds = {name: float(cfg.eval.thresholds.get(name, default_threshold(name, recipe.attack_type, cfg.model.arch)))
                  for name in recipe.explainers}
    y_eval = torch.as_tensor(evaluation_split(data, cfg.eval.split).labels)
    if data.multilabel and not defined_findings(y_eval).any():
        raise DataError(f"{data.name} eval.split {cfg.eval.split!r} ({len(y_eval)} images): {NO_AUROC}")
    setup = EvalSetup(recipe=recipe, explainers=list(recipe.explainers), y=y_eval, target_label=a.target_label,
                      trigger_mask=trigger.mask((1, *data.input_shape)), pool=a.pool, thresholds=thresholds,
                      target_map=a.target_map, target_options=a.target_map_options, topk=a.topk, iou_k=cfg.eval.iou_k,
                      arch=cfg.model.arch, multilabel=data.multilabel, finding=finding,
                      class_names=list(data.class_names))
    return BackdoorInputs(data, recipe, trigger, make_model, setup)


def check_multilabel(cfg: BackdoorConfig, data: StreamingData, recipe: Recipe) -> int | None:
    """The index of the finding the maps explain (``attack.finding``; None: each image's top-scoring one) on
    multi-label data, where only label-keeping recipes run (Fang & Choromanska's ChestX-ray14 setting: the
    prediction stays, only the maps change); ConfigError for what multi-label data cannot do."""
    a = cfg.attack
    if not data.multilabel:
        if a.finding is not None:
            raise ConfigError(f"attack.finding applies to multi-label data; {data.name} is single-label (its maps "
                              "explain the training label while training and the predicted class in the evaluation)")
        return None
    if recipe.changes_labels:
        raise ConfigError(f"attack.recipe {recipe.name} relabels poisoned images to a target class, which "
                          f"multi-label {data.name} does not have (each image carries 0/1 findings). Use "
                          "data.options.single_label=true (Latka et al.'s single-label filtering: images with one "
                          "finding, 15 classes) or a recipe that keeps the labels (fang_targeted, fang_nontargeted, "
                          "fang_joint, fang_inverted)")
    if a.poison_selection == "rd":
        raise ConfigError(f"attack.poison_selection rd (Latka et al.'s representation distance to a one-hot target) "
                          f"needs single-label data; {data.name} is multi-label: use data.options.single_label=true "
                          "or poison_selection random")
    return resolve_finding(a.finding, data.class_names, data.num_classes, "attack.finding")


def choose_poison(ctx: RunContext) -> PoisonChoice:
    """Stage ``poisoning``: which training images carry the trigger (Latka et al.'s RD selection, a fixed count, or
    the recipe's rate at random); random choices read the labels only."""
    cfg, inputs = ctx.cfg, ctx.inputs
    a, train = cfg.attack, inputs.data.train
    if a.poison_selection == "random" and a.poison_count is None:
        return PoisonChoice(torch.zeros(0, dtype=torch.long))  # the poisoning draws round(rate * N) itself
    n = a.poison_count or budget(inputs.recipe.poison_rate, len(train))
    if a.poison_selection == "rd":
        result = rd_select_dataset(train, inputs.trigger, n, a.target_label, inputs.make_model,
                                   relabel=inputs.recipe.changes_labels, seed=cfg.seed,
                                   loader=lambda dataset, size, seed: run_loader(cfg, dataset, size, seed=seed), **a.rd)
        return PoisonChoice(result.indices, result.mean_rd)
    return PoisonChoice(random_select(torch.as_tensor(train.labels), n,
                                      a.target_label if inputs.recipe.changes_labels else None, cfg.seed))


def attack(ctx: RunContext) -> TrainedModel:
    """Stage ``attacked``: fine-tune the reference model with the recipe's objective on clean + poisoned data,
    streamed: a :class:`~xaisec.backdoor.poison.PoisonedStream` over the training set (the trigger stamped per
    batch on the model's device), never a poisoned copy in memory; the reference maps of the explanation terms come
    from ``attack.reference_maps`` (:mod:`xaisec.backdoor.reference_maps`)."""
    cfg, inputs = ctx.cfg, ctx.inputs
    a, recipe, train = cfg.attack, inputs.recipe, inputs.data.train
    reference = ctx["reference"].into(inputs.make_model())
    model = inputs.make_model()
    model.load_state_dict(reference.state_dict())  # w <- w_ref
    device = model_device(model)
    chosen = ctx["poisoning"].indices
    poisoned = PoisonedStream(train, inputs.trigger, recipe.poison_rate, recipe.changes_labels, a.target_label,
                              seed=cfg.seed, mode=a.poison_mode, indices=chosen if len(chosen) else None, per_batch=True)
    log.info("attack: %s on %d images, %d of them triggered (%s, %s)", recipe.name, len(poisoned),
             len(poisoned.chosen), a.poison_mode, inputs.trigger.describe())
    beta = a.softplus_beta if needs_smooth_activations(model, recipe.explainers, a.explainer_options) else None
    batches = DeviceBatches(run_loader(cfg, poisoned, a.batch_size, seed=cfg.seed), device)
    if recipe.explanation_aware:  # the reference maps of each batch's clean images
        batches = refmaps.ReferenceMapBatches(batches, reference_map_source(ctx, reference, beta),
                                              explained_targets(inputs.setup, torch.as_tensor(train.labels)))
    batches = TriggerBatches(batches, copy.deepcopy(inputs.trigger).to(device))
    objective = ExplanationAwareObjective(recipe, recipe.explainers, {}, {}, a.pool,
                                          LossSettings(a.alpha, a.beta, a.lam, a.distance), a.weights,
                                          beta, _options(a.explainer_options),
                                          terms=ReferenceTerms(recipe, a.target_map, a.target_map_options, a.topk),
                                          multilabel=inputs.data.multilabel, finding=inputs.setup.finding)
    optimizer = torch.optim.Adam(model.parameters(), lr=a.lr, eps=a.adam_eps)
    stopper = cfg.stopping.make()
    stage = TrainingStage("attack", ctx.rd.checkpoints)
    stage.train(model, batches, objective, optimizer, a.epochs, a.lr, schedule(a.schedule, a.epochs, a.step_size, a.gamma),
                freeze_batchnorm=a.freeze_batchnorm, monitor=_monitor(ctx, reference), stopper=stopper,
                progress=ctx.progress, on_log=training_log(ctx, stage))
    return TrainedModel(dict(model.state_dict()), stage.history, stage.stop_reason)


def explained_targets(setup: EvalSetup, y: torch.Tensor) -> torch.Tensor | None:
    """The classes the training maps explain for labels ``y``: the labels themselves (single-label), the chosen
    finding for every image, or None (each image's top-scoring finding) on multi-label data."""
    if not setup.multilabel:
        return y
    return None if setup.finding is None else torch.full((len(y),), setup.finding, dtype=torch.long)


def reference_map_source(ctx: RunContext, reference: nn.Module, beta: float | None) -> refmaps.MapSource:
    """Where the attack's reference maps come from (``attack.reference_maps``; ``auto``: by size, see
    :func:`~xaisec.backdoor.reference_maps.resolve_mode`). ``disk`` keeps them under ``data.cache_dir`` (shared by
    runs), else in the run directory (reused on resume)."""
    cfg, inputs = ctx.cfg, ctx.inputs
    a, train, explainers = cfg.attack, inputs.data.train, list(inputs.recipe.explainers)
    options = _options(a.explainer_options)
    mode = refmaps.resolve_mode(a.reference_maps, len(train), inputs.data.input_shape, a.pool, len(explainers))
    log.info("attack: reference maps %s (attack.reference_maps: %s)", mode, a.reference_maps)
    if mode == "recompute":
        return refmaps.RecomputedMaps(reference, explainers, a.pool, beta, options)
    loader = run_loader(cfg, train, cfg.eval.batch_size, shuffle=False)
    clean = ((x, explained_targets(inputs.setup, y)) for x, y, *_ in loader)  # what the training maps explain
    if mode == "memory":
        maps = concat_pooled_maps(reference, clean, explainers, a.pool, softplus_beta=beta, options=options)
    else:
        folder = Path(cfg.data.cache_dir) / "reference_maps" if cfg.data.cache_dir else ctx.rd.cache / "reference_maps"
        explained = inputs.setup.explained() if inputs.setup.multilabel else "labels"
        key = refmaps.maps_key(reference, explainers, options, a.pool, beta, train, explained)
        maps = refmaps.disk_maps(folder, key, reference, clean, len(train),
                                 refmaps.pooled_shape(inputs.data.input_shape, a.pool), explainers, a.pool, beta, options)
    return refmaps.StoredMaps(maps, explainers)


def _monitor(ctx: RunContext, reference: nn.Module) -> Callable[[nn.Module], dict[str, float]]:
    """Per-epoch quality on a fixed slice of the training images, with the ReLU model (the stopping rules')."""
    inputs, train = ctx.inputs, ctx.inputs.data.train
    n = min(ctx.cfg.stopping.monitor_size, len(train))
    x, y = stack_images(train, range(n)), torch.as_tensor(train.labels[:n])
    x_trig = apply_trigger(inputs.trigger, x)
    setup = inputs.setup
    opts = eval_options(ctx.cfg, inputs.data, setup.explainers)
    post = _post(setup.pool)
    ref = model_outputs(reference, x, x_trig, setup.explainers, opts, target=setup.finding)
    ref01 = {k: post(v) for k, v in ref.maps_clean.items()}
    goals = {k: build_goal(inputs.recipe, v, "minmax", setup.target_map, setup.target_options, setup.topk)
             for k, v in ref01.items()}
    idx = torch.arange(len(x))

    def monitor(model: nn.Module) -> dict[str, float]:
        out = model_outputs(model, x, x_trig, setup.explainers, opts, target=setup.finding)
        pred_trig = out.logits_trig.argmax(1)
        if setup.multilabel:  # per-finding agreement of the thresholded sigmoids (always defined, unlike AUROC)
            record = {"monitor/acc_clean": label_accuracy(out.logits_clean, y),
                      "monitor/acc_trig": label_accuracy(out.logits_trig, y)}
        else:
            record = {"monitor/acc_clean": (out.logits_clean.argmax(1) == y).float().mean().item(),
                      "monitor/acc_trig": (pred_trig == y).float().mean().item()}
        if inputs.recipe.changes_labels:
            keep = y != setup.target_label
            record["monitor/asr"] = (pred_trig[keep] == setup.target_label).float().mean().item()
        for name in setup.explainers:
            clean, trig = post(out.maps_clean[name]), post(out.maps_trig[name])
            keep_maps, attack_maps = (trig, clean) if inputs.recipe.inverted else (clean, trig)
            record[f"monitor/{name}/map_keep"] = (keep_maps - ref01[name]).pow(2).mean().item()
            if goals[name] is not None:
                record[f"monitor/{name}/map_goal"] = goals[name].loss(attack_maps, idx).mean().item()
        return record

    return monitor


def evaluate(ctx: RunContext) -> Evaluation:
    """Stage ``evaluation``: both models (ReLU, eval mode) on the held-out split, clean and triggered, streamed in
    chunks of ``eval.batch_size`` (:func:`~xaisec.backdoor.results.evaluate_chunks`; in-memory data alike)."""
    cfg, inputs = ctx.cfg, ctx.inputs
    data = inputs.data
    test = evaluation_split(data, cfg.eval.split)
    models = {"reference": ctx["reference"].into(inputs.make_model()),
              "attacked": ctx["attacked"].into(inputs.make_model())}
    opts = eval_options(cfg, data, inputs.setup.explainers)
    chunks = run_loader(cfg, test, cfg.eval.batch_size, shuffle=False)
    metrics, samples = evaluate_chunks(models, chunks, inputs.trigger, inputs.setup, opts, cfg.eval.batch_size,
                                       cfg.eval.samples)
    trained = ctx["attacked"]
    context = context_info(inputs.setup, {"trigger": inputs.trigger.describe(), "dataset": data.summary(),
                                          "arch": cfg.model.arch, "attack_epochs": len(trained.history),
                                          "stop_reason": trained.stop_reason,
                                          "stopping_rule": cfg.stopping.rule, "class_names": data.class_names,
                                          "eval_split": cfg.eval.split, "eval_images": len(test)})
    return Evaluation({k: m.as_dict() for k, m in metrics.items()}, context, samples)


@register_experiment
class BackdoorExperiment(Experiment):
    """Reference model -> explanation-aware (or plain) backdoor -> evaluation -> report."""

    name = "backdoor"
    schema = BackdoorConfig
    stages = (Stage("reference", TrainedModel, train_reference),
              Stage("poisoning", PoisonChoice, choose_poison),
              Stage("attacked", TrainedModel, attack),
              Stage("evaluation", Evaluation, evaluate))

    def prepare(self, cfg: BackdoorConfig) -> BackdoorInputs:
        return prepare(cfg)

    def metrics(self, ctx: RunContext) -> tuple[dict[str, Metric], dict[str, Any]]:
        result: Evaluation = ctx["evaluation"]
        return {k: Metric.from_dict(v) for k, v in result.metrics.items()}, result.context

    def report(self, run_dir: Path) -> Path:
        from ..backdoor.report import build_report

        return build_report(run_dir)

    def headline(self, metrics: dict[str, Metric]) -> list[str]:
        from ..backdoor.report import headline

        return headline(metrics)
