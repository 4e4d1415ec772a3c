"""The ``backdoor`` experiment kind: explanation-aware backdoors (Fang & Choromanska, AAAI 2022; Noppel et al.,
IEEE S&P 2023; Latka et al.) from one config.

``prepare`` loads the data, builds the model, trigger and explainers once on two images (every user mistake
surfaces there, before the run directory exists). Stages: ``reference`` (train or reuse the clean model) ->
``attacked`` (fine-tune from it, ``w <- w_ref``, on clean plus poisoned samples; checkpointed every epoch) ->
``evaluation`` (the ReLU model on the held-out split: metrics and the report's sample tensors).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..backdoor.config import BackdoorConfig
from ..backdoor.evaluate import EvalSetup, default_threshold
from ..backdoor.goals import build_goal, pooled_maps
from ..backdoor.paper_metrics import split_test_halves
from ..backdoor.objectives import LOSS_EPS, ExplanationAwareObjective, LossSettings, needs_smooth_activations
from ..backdoor.poison import apply_trigger, poison_training_set
from ..backdoor.recipes import Recipe
from ..backdoor.selection import budget, random_select, rd_select
from ..backdoor.results import collect_metrics, context_info, model_outputs, sample_tensors
from ..data import ImageDataset
from ..errors import ConfigError, DataError, XaisecError
from ..explainers import EXPLAINERS, explain_all
from ..maps import MapPostprocess
from ..records import Metric
from ..train import TensorBatches, eval_mode
from ..triggers import build_trigger
from .artifacts import Artifact
from .checkpoint import TrainingStage, schedule
from .common import TrainedModel, load_data, model_factory, train_reference, training_log
from .runner import Experiment, RunContext, Stage, register_experiment

log = logging.getLogger(__name__)


@dataclass
class BackdoorInputs:
    """Everything checked before any training."""

    data: ImageDataset
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


def eval_options(cfg: BackdoorConfig, data: ImageDataset, explainers: list[str]) -> dict[str, dict]:
    """Each evaluated explainer's options: with ``eval.background_from_data`` what its class draws from the
    training images (:meth:`~xaisec.explainers.Explainer.options_from_data`, seeded by ``seed``), overridden by
    ``eval.explainer_options``."""
    given = cfg.eval.explainer_options
    if not cfg.eval.background_from_data:
        return _options(given)
    return {name: {**EXPLAINERS.get(name).options_from_data(data.x_train, cfg.seed), **given.get(name, {})}
            for name in explainers}


def _post(pool: int) -> MapPostprocess:
    return MapPostprocess(pool=pool, norm="minmax")


def evaluation_split(data: ImageDataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of the evaluated part of the test split: all of it, or its first or second half (Noppel et
    al. select hyperparameters on the first half and report on the second)."""
    if split == "all":
        return data.x_test, data.y_test
    try:
        part = dict(zip(("first_half", "second_half"), split_test_halves(len(data.y_test))))[split]
    except XaisecError as exc:
        raise ConfigError(f"eval.split {split!r}: {exc}") from None
    return data.x_test[part], data.y_test[part]


def prepare(cfg: BackdoorConfig) -> BackdoorInputs:
    a = cfg.attack
    data = load_data(cfg)
    if data.multilabel or data.x_train.dim() != 4:
        raise DataError(f"the backdoor experiment needs single-label image data; {data.name} is "
                        f"{'multi-label' if data.multilabel else 'tabular'}")
    if a.target_label >= data.num_classes:
        raise ConfigError(f"attack.target_label {a.target_label} is not a class of {data.name} "
                          f"(0..{data.num_classes - 1})")
    recipe = a.resolved_recipe()
    trigger = build_trigger(cfg.trigger.name, **cfg.trigger.options)
    x2 = data.x_train[:2]
    trigger(x2)
    make_model = model_factory(cfg, data)
    model = make_model()
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
    _, y_eval = evaluation_split(data, cfg.eval.split)
    setup = EvalSetup(recipe=recipe, explainers=list(recipe.explainers), y=y_eval, target_label=a.target_label,
                      trigger_mask=trigger.mask(data.x_test.shape), pool=a.pool, thresholds=thresholds,
                      target_map=a.target_map, target_options=a.target_map_options, topk=a.topk, iou_k=cfg.eval.iou_k,
                      arch=cfg.model.arch)
    return BackdoorInputs(data, recipe, trigger, make_model, setup)


def choose_poison(ctx: RunContext) -> PoisonChoice:
    """Stage ``poisoning``: which training images carry the trigger (Latka et al.'s RD selection, a fixed count, or
    the recipe's rate at random)."""
    cfg, inputs = ctx.cfg, ctx.inputs
    a, data = cfg.attack, inputs.data
    if a.poison_selection == "random" and a.poison_count is None:
        return PoisonChoice(torch.zeros(0, dtype=torch.long))  # poison_training_set draws round(rate * N) itself
    n = a.poison_count or budget(inputs.recipe.poison_rate, len(data.x_train))
    if a.poison_selection == "rd":
        result = rd_select(data.x_train, data.y_train, inputs.trigger, n, a.target_label, inputs.make_model,
                           relabel=inputs.recipe.changes_labels, seed=cfg.seed, **a.rd)
        return PoisonChoice(result.indices, result.mean_rd)
    return PoisonChoice(random_select(data.y_train, n, a.target_label if inputs.recipe.changes_labels else None,
                                      cfg.seed))


def attack(ctx: RunContext) -> TrainedModel:
    """Stage ``attacked``: fine-tune the reference model with the recipe's objective on clean + poisoned data."""
    cfg, inputs = ctx.cfg, ctx.inputs
    a, recipe, data = cfg.attack, inputs.recipe, inputs.data
    reference = ctx["reference"].into(inputs.make_model())
    model = inputs.make_model()
    model.load_state_dict(reference.state_dict())  # w <- w_ref
    chosen = ctx["poisoning"].indices
    poisoned = poison_training_set(data.x_train, data.y_train, inputs.trigger, recipe.poison_rate,
                                   recipe.changes_labels, a.target_label, seed=cfg.seed, mode=a.poison_mode,
                                   indices=chosen if len(chosen) else None)
    log.info("attack: %s on %d images, %d of them triggered (%s, %s)", recipe.name, len(poisoned),
             int(poisoned.poisoned.sum()), a.poison_mode, inputs.trigger.describe())
    preserve, goals = {}, {}
    beta = a.softplus_beta if needs_smooth_activations(model, recipe.explainers, a.explainer_options) else None
    if recipe.explanation_aware:  # the reference maps of the fixed training set, computed once
        raw = pooled_maps(reference, data.x_train, data.y_train, list(recipe.explainers), a.pool,
                          softplus_beta=beta, options=_options(a.explainer_options))
        for name, maps in raw.items():
            preserve[name] = MapPostprocess(norm=recipe.norm, eps=LOSS_EPS)(maps)
            goals[name] = build_goal(recipe, MapPostprocess(norm="minmax", eps=LOSS_EPS)(maps), recipe.norm,
                                     a.target_map, a.target_map_options, a.topk)
    objective = ExplanationAwareObjective(recipe, recipe.explainers, preserve, goals, a.pool,
                                          LossSettings(a.alpha, a.beta, a.lam, a.distance), a.weights,
                                          beta, _options(a.explainer_options))
    optimizer = torch.optim.Adam(model.parameters(), lr=a.lr, eps=a.adam_eps)
    batches = TensorBatches(*poisoned.tensors(), batch_size=a.batch_size, seed=cfg.seed)
    stopper = cfg.stopping.make()
    stage = TrainingStage("attack", ctx.rd.checkpoints)
    stage.train(model, batches, objective, optimizer, a.epochs, a.lr, schedule(a.schedule, a.epochs, a.step_size, a.gamma),
                freeze_batchnorm=a.freeze_batchnorm, monitor=_monitor(ctx, reference), stopper=stopper,
                progress=ctx.progress, on_log=training_log(ctx, stage))
    return TrainedModel(dict(model.state_dict()), stage.history, stage.stop_reason)


def _monitor(ctx: RunContext, reference: nn.Module) -> Callable[[nn.Module], dict[str, float]]:
    """Per-epoch quality on a fixed slice of the training images, with the ReLU model (the stopping rules')."""
    inputs, n = ctx.inputs, ctx.cfg.stopping.monitor_size
    x, y = inputs.data.x_train[:n], inputs.data.y_train[:n]
    x_trig = apply_trigger(inputs.trigger, x)
    setup = inputs.setup
    opts = eval_options(ctx.cfg, inputs.data, setup.explainers)
    post = _post(setup.pool)
    ref = model_outputs(reference, x, x_trig, setup.explainers, opts)
    ref01 = {k: post(v) for k, v in ref.maps_clean.items()}
    goals = {k: build_goal(inputs.recipe, v, "minmax", setup.target_map, setup.target_options, setup.topk)
             for k, v in ref01.items()}
    idx = torch.arange(len(x))

    def monitor(model: nn.Module) -> dict[str, float]:
        out = model_outputs(model, x, x_trig, setup.explainers, opts)
        record = {"monitor/acc_clean": (out.logits_clean.argmax(1) == y).float().mean().item()}
        pred_trig = out.logits_trig.argmax(1)
        record["monitor/acc_trig"] = (pred_trig == y).float().mean().item()
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
    """Stage ``evaluation``: both models (ReLU, eval mode) on the held-out split, clean and triggered."""
    cfg, inputs = ctx.cfg, ctx.inputs
    data = inputs.data
    x_test, y_test = evaluation_split(data, cfg.eval.split)
    reference = ctx["reference"].into(inputs.make_model())
    attacked = ctx["attacked"].into(inputs.make_model())
    x_trig = apply_trigger(inputs.trigger, x_test)
    opts = eval_options(cfg, data, inputs.setup.explainers)
    outputs = {name: model_outputs(model, x_test, x_trig, inputs.setup.explainers, opts, cfg.eval.batch_size)
               for name, model in (("reference", reference), ("attacked", attacked))}
    metrics = collect_metrics(outputs, inputs.setup)
    trained = ctx["attacked"]
    context = context_info(inputs.setup, {"trigger": inputs.trigger.describe(), "dataset": data.summary(),
                                          "arch": cfg.model.arch, "attack_epochs": len(trained.history),
                                          "stop_reason": trained.stop_reason,
                                          "stopping_rule": cfg.stopping.rule, "class_names": data.class_names,
                                          "eval_split": cfg.eval.split, "eval_images": len(y_test)})
    samples = sample_tensors(x_test, x_trig, y_test, outputs, inputs.setup, cfg.eval.samples)
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
