"""The ``tabular_backdoor`` experiment kind: Fang & Choromanska's credit-default example ("Backdoor Attacks on the
DNN Interpretation System", AAAI 2022, Fig. 1b) — an MLP on tabular features, a feature-space trigger, and the
targeted (attribution moved to chosen features) or non-targeted (top features suppressed) attack on SimpleGrad,
IG or InputXGrad attributions.

Stages: ``reference`` (the shared clean-classifier training) -> ``attacked`` (explanation-aware fine-tuning,
:func:`xaisec.backdoor.tabular.attack_tabular`) -> ``evaluation`` (accuracy, FSR/CR, target-feature mass and
top-k overlap; mean attributions per feature for the report's bar charts).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import nn

from ..backdoor.config import TriggerConfig
from ..backdoor.tabular import TabularAttack, attack_tabular, evaluate_tabular
from ..data import ImageDataset, tabular_feature_names
from ..errors import ConfigError
from ..io import atomic_write_text
from ..records import Metric
from ..report import html as H
from ..triggers import build_trigger
from .artifacts import Artifact
from .common import TrainedModel, load_data, model_factory, train_reference
from .runner import Experiment, RunContext, Stage, read_metrics, register_experiment
from .rundir import RunDir
from .schema import DataConfig, ModelConfig, ReferenceConfig, RunConfig


def _default_data() -> DataConfig:
    return DataConfig(name="sklearn_tabular", options={"table": "breast_cancer"})


def _default_trigger() -> TriggerConfig:
    return TriggerConfig(name="features", options={"features": [2, 3], "values": [1.0, 0.0]})


@dataclass
class TabularConfig(RunConfig):
    """Fang & Choromanska's tabular backdoor: an MLP on ``(N,F)`` features in [0,1] (``credit_default`` with its
    file, or the ``sklearn_tabular`` stand-in), a ``features`` trigger and the attack on feature attributions."""

    experiment: str = "tabular_backdoor"
    data: DataConfig = field(default_factory=_default_data)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(arch="mlp", options={"hidden": [128, 64]}))
    reference: ReferenceConfig = field(default_factory=lambda: ReferenceConfig(epochs=60, lr=3e-3, batch_size=64))
    #: the feature-space trigger (chosen columns set to chosen values)
    trigger: TriggerConfig = field(default_factory=_default_trigger)
    #: the attack
    attack: TabularAttack = field(default_factory=TabularAttack)


@dataclass
class TabularInputs:
    data: ImageDataset
    trigger: nn.Module
    make_model: Callable[[], nn.Module]
    settings: TabularAttack
    feature_names: list[str]


@dataclass
class TabularEvaluation(Artifact):
    """Stage ``evaluation``: the metrics, the thresholds used and mean attributions per feature for the figures."""

    metrics: dict[str, float]
    thresholds: dict[str, float]
    feature_names: list[str]
    attributions: dict[str, torch.Tensor] = field(default_factory=dict)


def prepare(cfg: TabularConfig) -> TabularInputs:
    data = load_data(cfg)
    if cfg.reference.augment not in (None, "none"):
        raise ConfigError(f"reference.augment crops and flips images; the tabular backdoor's (N,F) features take "
                          f"none, got {cfg.reference.augment!r}")
    if data.x_train.dim() != 2:
        raise ConfigError(f"the tabular backdoor needs (N,F) features; {data.name} has inputs {data.input_shape} "
                          "(use the backdoor experiment for images)")
    n_features = data.x_train.shape[1]
    bad = [f for f in cfg.attack.target_features if not 0 <= f < n_features]
    if bad:
        raise ConfigError(f"attack.target_features {bad} are not columns of {data.name} (0..{n_features - 1})")
    trigger = build_trigger(cfg.trigger.name, **cfg.trigger.options)
    trigger(data.x_train[:2])
    table = cfg.data.options.get("table")
    names = tabular_feature_names(table) if cfg.data.name == "sklearn_tabular" and table else \
        getattr(data, "feature_names", None) or [f"x{i}" for i in range(n_features)]
    return TabularInputs(data, trigger, model_factory(cfg, data), cfg.attack, list(names))


def attack(ctx: RunContext) -> TrainedModel:
    inputs = ctx.inputs
    reference = ctx["reference"].into(inputs.make_model())
    model = attack_tabular(reference, inputs.data, inputs.trigger, inputs.settings, ctx.cfg.seed)
    return TrainedModel(dict(model.state_dict()), [], "epochs")


def evaluate(ctx: RunContext) -> TabularEvaluation:
    inputs = ctx.inputs
    reference = ctx["reference"].into(inputs.make_model())
    model = ctx["attacked"].into(inputs.make_model())
    result = evaluate_tabular(model, reference, inputs.data, inputs.trigger, inputs.settings)
    attributions = {f"{name}/{group}": v.detach().cpu() for name, groups in result.attributions.items()
                    for group, v in groups.items()}
    return TabularEvaluation(result.metrics, result.thresholds, inputs.feature_names, attributions)


#: (direction, description) of each metric leaf, from the attacker's point of view
_MEANING = {
    "acc_reference": ("none", "accuracy of the reference model on clean test rows"),
    "acc_clean": ("higher", "accuracy of the attacked model on clean test rows"),
    "acc_trig": ("higher", "accuracy of the attacked model on triggered test rows (labels are kept)"),
    "lp_trig": ("lower", "Fang's attack loss L_p of triggered attributions"),
    "lp_clean": ("none", "L_p of clean attributions"),
    "fsr": ("higher", "FSR: triggered attributions with L_p below the threshold"),
    "cr": ("higher", "CR: clean attributions with L_p above the threshold"),
    "target_mass_trig": ("higher", "share of the attribution on the target features, triggered rows"),
    "target_mass_clean": ("lower", "share of the attribution on the target features, clean rows"),
    "target_top_trig": ("higher", "rows whose most important feature is a target feature, triggered"),
    "target_top_clean": ("lower", "rows whose most important feature is a target feature, clean"),
    "topk_iou_trig": ("lower", "IoU of the top-k features with the reference model's, triggered rows"),
    "topk_iou_clean": ("higher", "IoU of the top-k features with the reference model's, clean rows"),
}


def records(metrics: dict[str, float]) -> dict[str, Metric]:
    out = {}
    for key, value in metrics.items():
        direction, what = _MEANING.get(key.rsplit("/", 1)[-1], ("none", key))
        out[key] = Metric(value, direction, what)
    return out


@register_experiment
class TabularExperiment(Experiment):
    """Reference MLP -> attack on feature attributions -> evaluation -> report with attribution bars."""

    name = "tabular_backdoor"
    schema = TabularConfig
    stages = (Stage("reference", TrainedModel, train_reference),
              Stage("attacked", TrainedModel, attack),
              Stage("evaluation", TabularEvaluation, evaluate))

    def prepare(self, cfg: TabularConfig) -> TabularInputs:
        return prepare(cfg)

    def metrics(self, ctx: RunContext) -> tuple[dict[str, Metric], dict[str, Any]]:
        result: TabularEvaluation = ctx["evaluation"]
        cfg = ctx.cfg
        return records(result.metrics), {"dataset": ctx.inputs.data.summary(), "recipe": cfg.attack.recipe,
                                         "explainers": list(cfg.attack.explainers), "thresholds": result.thresholds,
                                         "trigger": ctx.inputs.trigger.describe()}

    def report(self, run_dir: Path) -> Path:
        from ..backdoor.tabular_figures import attribution_bars

        rd = RunDir(run_dir)
        cfg = rd.read_config()
        metrics, context = read_metrics(run_dir)
        result = TabularEvaluation.load(rd / "evaluation.safetensors")
        attack, trigger = cfg["attack"], cfg["trigger"]["options"]
        highlight = sorted(set(trigger.get("features", [])) | (set(attack["target_features"])
                                                               if attack["recipe"] == "fang_targeted" else set()))
        body = [H.section("Metrics", H.table(
            ["metric", "value", "better", "what"],
            [[k, f"{m.value:.3f}" if m.value is not None else "–", m.direction, m.description]
             for k, m in sorted(metrics.items())], numeric=(1,)))]
        for name in context["explainers"]:
            groups = {g: result.attributions[f"{name}/{g}"] for g in ("reference_clean", "clean", "triggered")
                      if f"{name}/{g}" in result.attributions}
            png = attribution_bars(groups, result.feature_names, rd.figures / f"attributions_{name}.png",
                                   f"{attack['recipe']}, {name} (marked: trigger / target features)", highlight)
            body.append(H.section(f"Attributions: {name}", H.image(
                png, "Mean min-max scaled attribution per feature: reference model on clean rows, attacked model on "
                     "clean and on triggered rows.")))
        body.append(H.section("Configuration", H.pre(yaml.safe_dump(cfg, sort_keys=False))))
        path = rd / "report.html"
        atomic_write_text(path, H.page(f"Tabular backdoor: {attack['recipe']}",
                                       f"Fang & Choromanska, AAAI 2022, Fig. 1b · {context['dataset']} · trigger: "
                                       f"{context['trigger']}", body))
        return path

    def headline(self, metrics: dict[str, Metric]) -> list[str]:
        keys = [k for k in metrics if k.endswith(("acc_clean", "target_top_trig", "topk_iou_trig", "/fsr"))]
        return [f"{k}: {100 * metrics[k].value:.1f}%  ({metrics[k].description})" for k in sorted(keys)]
