"""The ``fang_defenses`` experiment kind: the classical backdoor defenses measured on finished backdoor runs, as
Fang & Choromanska ("Backdoor Attacks on the DNN Interpretation System", AAAI 2022, Tables 2-3 and Figure 4) did for
their explanation backdoors, plus Re-BN, input-level detectors and ``xaisec audit``.

``prepare`` checks every run in ``runs`` (a finished backdoor run with both models), rebuilds its data, trigger and
evaluation setup through the backdoor kind's own ``prepare`` and picks the models: every attacked model, plus one
clean reference per architecture and dataset. Stages: ``models`` (their weights and undefended metrics) -> one stage
per measurement family (:data:`~xaisec.defenses.config.MEASUREMENTS`), each looping over the models with
``ctx.cached`` so a killed run loses no finished model. Every model is measured on its own run's held-out split
and trigger.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..audit import DEFAULT_CHECKS
from ..backdoor.config import BackdoorConfig
from ..backdoor.poison import apply_trigger
from ..data import ImageDataset
from ..defenses.config import MEASUREMENTS, DefensesConfig
from ..defenses.measure import (Probe, audit_summary, clustering_pairs, detection_aurocs, median_set,
                                neural_cleanse_sets, pruning_sweep, rebn_repair, tv_sweep)
from ..errors import ConfigError, XaisecError
from ..io import load_weights
from ..records import Metric
from .artifacts import Artifact
from .backdoor import BackdoorInputs
from .backdoor import prepare as prepare_backdoor
from .common import in_memory
from .rundir import RunDir
from .runner import Experiment, RunContext, Stage, load_run, register_experiment

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ModelUnderTest:
    """One model to measure: ``role`` is ``reference`` (clean) or ``attacked``; ``source`` is its run's prepared
    data, trigger and evaluation setup; ``reference_file`` the clean model of the same run (the metrics compare
    maps against it)."""

    label: str
    role: str
    run: Path
    run_cfg: BackdoorConfig
    source: BackdoorInputs
    weights_file: Path
    reference_file: Path

    def build(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        model = self.source.make_model()
        model.load_state_dict(weights)
        return model.eval()


@dataclass(frozen=True)
class DefensesInputs:
    models: tuple[ModelUnderTest, ...]


@dataclass
class ModelSet(Artifact):
    """Stage ``models``: who is measured (``models``: label, role, run, recipe, trigger...), the weights of each
    model and of its run's clean reference, and each model's undefended metrics on its evaluation images."""

    models: list[dict]
    weights: dict[str, dict[str, torch.Tensor]]
    references: dict[str, dict[str, torch.Tensor]]
    baseline: dict[str, dict]


@dataclass
class Measurements(Artifact):
    """One measurement family's results per model label (JSON), with the settings used."""

    per_model: dict[str, dict]
    settings: dict = field(default_factory=dict)


@dataclass
class NeuralCleanseResults(Measurements):
    """Neural Cleanse per model, plus the reverse-engineered ``triggers`` (``{label: {masks (K,1,H,W), patterns
    (K,C,H,W)}}``) of the representative (median anomaly index) repeat, for the figures."""

    triggers: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


# -- preparing ------------------------------------------------------------------------------------------------------
def _folder_label(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "run"


def _unique(label: str, taken: set[str]) -> str:
    out, i = label, 2
    while out in taken:
        out, i = f"{label}_{i}", i + 1
    taken.add(out)
    return out


def check_backdoor_run(path_text: str, where: str) -> tuple[Path, BackdoorConfig]:
    """``(absolute path, validated config)`` of a finished backdoor run; anything else raises ConfigError."""
    path = Path(path_text).expanduser().resolve()
    where = f"{where} ({path_text})"
    if not path.is_dir():
        raise ConfigError(f"{where}: no such folder; give the run directory `xaisec run <recipe>` printed")
    try:
        kind, run_cfg = load_run(path)
    except XaisecError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if kind.name != "backdoor":
        raise ConfigError(f"{where} is a {kind.name} run; fang_defenses measures backdoor runs (`xaisec run <recipe>`)")
    rd = RunDir(path)
    if not rd.finished:
        raise ConfigError(f"{where} is not a finished backdoor run (state: {rd.state()}); finish it first with "
                          f"`xaisec run --resume {path}`")
    for name in ("reference.safetensors", "attacked.safetensors"):
        if not (rd / name).is_file():
            raise ConfigError(f"{where} has no {name}; it is not a complete backdoor run directory")
    return path, run_cfg


def _check_sizes(cfg: DefensesConfig, data: ImageDataset, where: str) -> None:
    n_train, n_test = len(data.x_train), len(data.x_test)
    if cfg.n_eval > n_test:
        raise ConfigError(f"n_eval {cfg.n_eval} exceeds the {n_test} test images of {where}; lower n_eval")
    if "audit" in cfg.measure and n_test - cfg.n_eval < 2:
        raise ConfigError(f"the audit runs on the test images after the first n_eval={cfg.n_eval}, but {where} has "
                          f"only {n_test}; lower n_eval or drop audit from measure")
    needs = {"neural_cleanse.images x repeats": cfg.neural_cleanse.images * cfg.neural_cleanse.repeats
             if "neural_cleanse" in cfg.measure else 0,
             "2 x input_detection.calibration_images": 2 * cfg.input_detection.calibration_images
             if "input_detection" in cfg.measure else 0}
    for what, n in needs.items():
        if n > n_train:
            raise ConfigError(f"{what} = {n} exceeds the {n_train} training images of {where}; lower it")


def prepare(cfg: DefensesConfig) -> DefensesInputs:
    """Check every run, rebuild its inputs and pick the models (before the run directory exists)."""
    seen: dict[Path, int] = {}
    sources = []
    for i, text in enumerate(cfg.runs):
        path, run_cfg = check_backdoor_run(text, f"runs[{i}]")
        if path in seen:
            raise ConfigError(f"runs[{i}] ({text}) repeats runs[{seen[path]}]; list every run once")
        seen[path] = i
        try:
            source = prepare_backdoor(run_cfg)
            source = dataclasses.replace(source, data=in_memory(source.data))  # the defenses work on tensors
        except XaisecError as exc:
            raise ConfigError(f"runs[{i}] ({text}): its config no longer prepares: {exc}") from None
        if source.data.multilabel:
            raise ConfigError(f"runs[{i}] ({text}) is on multi-label {source.data.name}; the defenses measure "
                              "Top-1 accuracy and need single-label data")
        _check_sizes(cfg, source.data, f"runs[{i}] ({text})")
        for name in ("reference.safetensors", "attacked.safetensors"):
            try:
                load_weights(source.make_model(), path / name)
            except XaisecError as exc:
                raise ConfigError(f"runs[{i}] ({text}): {exc}") from None
        sources.append((path, run_cfg, source))
    by_arch: dict[str, set[str]] = {}
    for _, run_cfg, source in sources:
        by_arch.setdefault(run_cfg.model.arch, set()).add(source.data.name)
    taken: set[str] = set()
    references: dict[tuple[str, str], ModelUnderTest] = {}
    attacked: list[ModelUnderTest] = []
    for path, run_cfg, source in sources:
        arch, dataset = run_cfg.model.arch, source.data.name
        key = (arch, dataset)
        common = dict(run=path, run_cfg=run_cfg, source=source, reference_file=path / "reference.safetensors")
        if key not in references:
            name = f"reference_{arch}" + (f"_{dataset}" if len(by_arch[arch]) > 1 else "")
            references[key] = ModelUnderTest(_unique(_folder_label(name), taken), "reference",
                                             weights_file=path / "reference.safetensors", **common)
        attacked.append(ModelUnderTest(_unique(_folder_label(path.name), taken), "attacked",
                                       weights_file=path / "attacked.safetensors", **common))
    # the old tables' order: each reference right before the first attacked model of its architecture
    ordered: list[ModelUnderTest] = []
    for m in attacked:
        ref = references.pop((m.run_cfg.model.arch, m.source.data.name), None)
        ordered += [ref, m] if ref is not None else [m]
    return DefensesInputs(tuple(ordered))


# -- evaluating one model ---------------------------------------------------------------------------------------------
def attack_metric_name(m: ModelUnderTest) -> str:
    """FSR for map-changing recipes, ASR for label-changing ones that keep the maps (BadNets, full disguise)."""
    recipe = m.source.recipe
    return "asr" if recipe.changes_labels and not recipe.changes_maps else "fsr"


def make_probe(m: ModelUnderTest, reference: nn.Module, n_eval: int) -> Probe:
    """The first ``n_eval`` test images of ``m``'s run, with its trigger, setup and clean ``reference``."""
    data = m.source.data
    x, y = data.x_test[:n_eval], data.y_test[:n_eval]
    options = {k: dict(v) for k, v in m.run_cfg.eval.explainer_options.items()}
    return Probe.build(reference, x, y, apply_trigger(m.source.trigger, x), m.source.setup, options)


def _for_each_model(ctx: RunContext, measure: Callable[[ModelUnderTest, nn.Module], Any]) -> dict[str, Any]:
    """``{label: measure(m, model)}`` over the models, each cached (a resumed run skips finished models) and seeded
    with the run's seed, so a model's result does not depend on which models ran before it."""
    models: ModelSet = ctx["models"]
    out = {}
    for m in ctx.inputs.models:
        def make(m: ModelUnderTest = m) -> Any:
            model = m.build(models.weights[m.label])
            torch.manual_seed(ctx.cfg.seed)
            return measure(m, model)

        out[m.label] = ctx.cached(m.label, make)
        log.info("%s: %s done", ctx.stage, m.label)
    return out


def _probe(ctx: RunContext, m: ModelUnderTest) -> Probe:
    return make_probe(m, m.build(ctx["models"].references[m.label]), ctx.cfg.n_eval)


# -- stages -----------------------------------------------------------------------------------------------------------
def select_models(ctx: RunContext) -> ModelSet:
    """Stage ``models``: the weights of every model (and of its run's reference) and its undefended metrics."""
    weights, references, baseline, info = {}, {}, {}, []
    for m in ctx.inputs.models:
        model = load_weights(m.source.make_model(), m.weights_file).eval()
        reference = load_weights(m.source.make_model(), m.reference_file).eval()
        weights[m.label], references[m.label] = dict(model.state_dict()), dict(reference.state_dict())
        torch.manual_seed(ctx.cfg.seed)
        baseline[m.label] = ctx.cached(m.label, lambda: make_probe(m, reference, ctx.cfg.n_eval).metrics(model))
        recipe = m.source.recipe
        info.append({"label": m.label, "role": m.role, "run": str(m.run), "arch": m.run_cfg.model.arch,
                     "dataset": m.source.data.summary(), "recipe": recipe.name if m.role == "attacked" else None,
                     "summary": recipe.summary if m.role == "attacked" else "clean reference model",
                     "explainers": list(m.source.setup.explainers), "trigger": m.source.trigger.describe(),
                     "global_trigger": bool(m.source.setup.trigger_mask.float().mean() >= 0.5),
                     "attack_metric": attack_metric_name(m), "class_names": list(m.source.data.class_names)})
    return ModelSet(info, weights, references, baseline)


def measure_neural_cleanse(ctx: RunContext) -> NeuralCleanseResults:
    """Stage ``neural_cleanse``: reverse-engineered triggers and the MAD anomaly index (Fang, Figure 4a) on
    ``repeats`` disjoint sets of clean training images."""
    s = ctx.cfg.neural_cleanse
    raw = _for_each_model(ctx, lambda m, model: neural_cleanse_sets(
        model, m.source.data.x_train, s.images, s.repeats, epochs=s.epochs, steps_per_epoch=s.steps_per_epoch,
        batch_size=s.batch_size, seed=ctx.cfg.seed))
    per_model = {}
    for label, r in raw.items():
        index = r["model_anomaly_index"]
        rep = median_set(index)
        per_model[label] = {"model_anomaly_index": float(index[rep]), "threshold": float(r["threshold"]),
                            "flagged_classes": r["flagged"][rep].nonzero().flatten().tolist(),
                            "suspect_class": int(r["l1_norms"][rep].argmin()),
                            "l1_norms": r["l1_norms"][rep].tolist(), "anomaly_index": r["anomaly_index"][rep].tolist(),
                            "repeats": [[float(v), r["flagged"][i].nonzero().flatten().tolist()]
                                        for i, v in enumerate(index)]}
    triggers = {label: {"masks": r["masks"], "patterns": r["patterns"]} for label, r in raw.items()}
    return NeuralCleanseResults(per_model, dataclasses.asdict(s), triggers)


def measure_activation_clustering(ctx: RunContext) -> Measurements:
    """Stage ``activation_clustering``: Fang's Table 2 protocol on clean/triggered test pairs."""
    n = min(ctx.cfg.activation_clustering.pairs, ctx.cfg.n_eval)

    def measure(m: ModelUnderTest, model: nn.Module) -> dict:
        x = m.source.data.x_test[:n]
        return clustering_pairs(model, x, apply_trigger(m.source.trigger, x), ctx.cfg.seed)

    return Measurements(_for_each_model(ctx, measure), dataclasses.asdict(ctx.cfg.activation_clustering))


def measure_fine_pruning(ctx: RunContext) -> Measurements:
    """Stage ``fine_pruning``: clean accuracy and attack metric against the pruned fraction (Fang, Figure 4b)."""
    s = ctx.cfg.fine_pruning
    return Measurements(_for_each_model(ctx, lambda m, model: pruning_sweep(
        model, _probe(ctx, m), attack_metric_name(m), s.fractions, m.source.data.x_train[:s.rank_images],
        s.max_accuracy_drop)), dataclasses.asdict(s))


def measure_tv_denoising(ctx: RunContext) -> Measurements:
    """Stage ``tv_denoising``: the run's metrics on TV-denoised clean and triggered inputs (Fang, Table 3)."""
    s = ctx.cfg.tv_denoising
    return Measurements(_for_each_model(ctx, lambda m, model: tv_sweep(model, _probe(ctx, m), s.weights, s.n_iter)),
                        dataclasses.asdict(s))


def measure_rebn(ctx: RunContext) -> Measurements:
    """Stage ``rebn``: metrics after re-estimating the BatchNorm statistics on clean training images."""
    n = ctx.cfg.rebn.images
    return Measurements(_for_each_model(ctx, lambda m, model: rebn_repair(model, _probe(ctx, m),
                                                                          m.source.data.x_train[:n])),
                        dataclasses.asdict(ctx.cfg.rebn))


def measure_input_detection(ctx: RunContext) -> Measurements:
    """Stage ``input_detection``: AUROC of triggered vs clean evaluation inputs (disjoint halves) of explanation
    consistency, STRIP and Spectral Signatures."""
    s, half = ctx.cfg.input_detection, ctx.cfg.n_eval // 2

    def measure(m: ModelUnderTest, model: nn.Module) -> dict:
        data, n = m.source.data, s.calibration_images
        triggered = apply_trigger(m.source.trigger, data.x_test[half:2 * half])
        reference = m.build(ctx["models"].references[m.label])
        return detection_aurocs(model, reference, data.x_test[:half], triggered, data.x_train[:n],
                                data.x_train[n:2 * n], s.strip_blends, ctx.cfg.seed)

    return Measurements(_for_each_model(ctx, measure), dataclasses.asdict(s))


def measure_audit(ctx: RunContext) -> Measurements:
    """Stage ``audit``: ``xaisec audit`` on the test images after the evaluation images, ``audit.suspects`` of them
    triggered; each model's audit page is kept under ``audits/<label>/``."""
    s, n = ctx.cfg.audit, ctx.cfg.n_eval
    checks = tuple(s.checks) if s.checks is not None else DEFAULT_CHECKS

    def measure(m: ModelUnderTest, model: nn.Module) -> dict:
        d = m.source.data
        data = ImageDataset(d.name, d.x_train, d.y_train, d.x_test[n:], d.y_test[n:], d.num_classes, d.class_names)
        return audit_summary(model, data, apply_trigger(m.source.trigger, d.x_test[n:n + s.suspects]),
                             ctx.rd / "audits" / m.label, budget=s.budget, checks=checks, seed=ctx.cfg.seed)

    return Measurements(_for_each_model(ctx, measure), {**dataclasses.asdict(s), "checks": list(checks)})


STAGE_FUNCTIONS: dict[str, Callable[[RunContext], Measurements]] = {
    "neural_cleanse": measure_neural_cleanse, "activation_clustering": measure_activation_clustering,
    "fine_pruning": measure_fine_pruning, "tv_denoising": measure_tv_denoising, "rebn": measure_rebn,
    "input_detection": measure_input_detection, "audit": measure_audit}


def _measured(name: str) -> Callable[[DefensesConfig], bool]:
    return lambda cfg: name in cfg.measure


# -- results, metrics, kind -------------------------------------------------------------------------------------------
def collect_results(artifacts: dict[str, Artifact]) -> tuple[dict[str, dict], list[dict]]:
    """``({label: {measurement: result}}, model infos)`` from the stage results (the report's and the metrics'
    one view of a run)."""
    models: ModelSet = artifacts["models"]
    results = {info["label"]: {**info, "metrics": models.baseline[info["label"]]} for info in models.models}
    for name in MEASUREMENTS:
        if name in artifacts:
            for label, value in artifacts[name].per_model.items():
                results[label][name] = value
    return results, models.models


def load_artifacts(run_dir: str | Path) -> dict[str, Artifact]:
    """The finished stages' results of a ``fang_defenses`` run directory, by stage name."""
    rd = RunDir(run_dir)
    out = {}
    for stage in FangDefensesExperiment.stages:
        path = rd / f"{stage.name}.safetensors"
        if path.is_file():
            out[stage.name] = stage.result.load(path)
    if "models" not in out:
        raise ConfigError(f"{rd.path} has no models.safetensors; finish the run with `xaisec run --resume {rd.path}`")
    return out


@register_experiment
class FangDefensesExperiment(Experiment):
    """Backdoor runs -> models -> one stage per defense family -> tables and Figures 4a/4b."""

    name = "fang_defenses"
    schema = DefensesConfig
    stages = (Stage("models", ModelSet, select_models),
              Stage("neural_cleanse", NeuralCleanseResults, measure_neural_cleanse, _measured("neural_cleanse")),
              *(Stage(name, Measurements, STAGE_FUNCTIONS[name], _measured(name))
                for name in MEASUREMENTS if name != "neural_cleanse"))

    def prepare(self, cfg: DefensesConfig) -> DefensesInputs:
        return prepare(cfg)

    def metrics(self, ctx: RunContext) -> tuple[dict[str, Metric], dict[str, Any]]:
        from ..defenses.tables import metric_records, report_context

        results, models = collect_results(ctx.results)
        cfg = dataclasses.asdict(ctx.cfg)
        return metric_records(results, cfg), report_context(models, cfg)

    def report(self, run_dir: Path) -> Path:
        from ..defenses.report import build_report

        return build_report(run_dir)

    def headline(self, metrics: dict[str, Metric]) -> list[str]:
        from ..defenses.tables import headline

        return headline(metrics)
