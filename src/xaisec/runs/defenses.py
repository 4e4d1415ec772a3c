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

from ..audit import DEFAULT_CHECKS, run_audit
from ..audit.checks_inputs import explainers_for, head_inputs
from ..backdoor.config import BackdoorConfig
from ..backdoor.evaluate import EvalSetup, ModelOutputs
from ..backdoor.poison import apply_trigger
from ..backdoor.results import collect_metrics, model_outputs
from ..data import ImageDataset
from ..defenses import (ExplanationConsistency, STRIPDetector, activation_clustering, auroc, misclustering,
                        neural_cleanse, pruning_curve, rebn, spectral_signatures, statistics_shift, tv_chambolle)
from ..defenses.config import MEASUREMENTS, DefensesConfig
from ..defenses.rebn import batchnorm_layers
from ..errors import ConfigError, XaisecError
from ..io import load_weights
from ..records import Metric
from ..train import predict
from .artifacts import Artifact
from .backdoor import BackdoorInputs
from .backdoor import prepare as prepare_backdoor
from .rundir import RunDir
from .runner import Experiment, RunContext, Stage, load_run, register_experiment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
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
        except XaisecError as exc:
            raise ConfigError(f"runs[{i}] ({text}): its config no longer prepares: {exc}") from None
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
        ref = references[(m.run_cfg.model.arch, m.source.data.name)]
        if ref not in ordered:
            ordered.append(ref)
        ordered.append(m)
    return DefensesInputs(tuple(ordered))


# -- evaluating one model ---------------------------------------------------------------------------------------------
def attack_metric_name(m: ModelUnderTest) -> str:
    """FSR for map-changing recipes, ASR for label-changing ones that keep the maps (BadNets, full disguise)."""
    recipe = m.source.recipe
    return "asr" if recipe.changes_labels and not recipe.changes_maps else "fsr"


@dataclass(frozen=True)
class Probe:
    """A model's evaluation images ``x`` (N,C,H,W), labels ``y``, triggered ``x_trig``, the run's setup and its clean
    reference's outputs on them: ``metrics(model)`` gives the run's metrics of any (repaired) model."""

    x: torch.Tensor
    y: torch.Tensor
    x_trig: torch.Tensor
    setup: EvalSetup
    options: dict[str, dict]
    reference: ModelOutputs

    def metrics(self, model: nn.Module, x: torch.Tensor | None = None, x_trig: torch.Tensor | None = None
                ) -> dict[str, float]:
        """Top-1 on clean/triggered inputs, ASR (label-changing recipes), FSR and CR averaged over the run's
        explainers."""
        x = self.x if x is None else x
        x_trig = self.x_trig if x_trig is None else x_trig
        out = model_outputs(model, x, x_trig, self.setup.explainers, self.options)
        m = collect_metrics({"reference": self.reference, "attacked": out}, self.setup)
        res = {"acc_clean": m["attacked/top1_clean"].value, "acc_trig": m["attacked/top1_trig"].value}
        if "attacked/asr" in m:
            res["asr"] = m["attacked/asr"].value
        for key in ("fsr", "cr"):
            vals = [m[f"attacked/{e}/{key}"].value for e in self.setup.explainers if f"attacked/{e}/{key}" in m]
            if vals:
                res[key] = sum(vals) / len(vals)
        return res


def make_probe(m: ModelUnderTest, reference: nn.Module, n_eval: int) -> Probe:
    data = m.source.data
    x, y = data.x_test[:n_eval], data.y_test[:n_eval]
    x_trig = apply_trigger(m.source.trigger, x)
    setup = dataclasses.replace(m.source.setup, y=y)
    options = {k: dict(v) for k, v in m.run_cfg.eval.explainer_options.items()}
    return Probe(x, y, x_trig, setup, options, model_outputs(reference, x, x_trig, setup.explainers, options))


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

    def measure(m: ModelUnderTest, model: nn.Module) -> dict[str, torch.Tensor]:
        x = m.source.data.x_train
        runs = [neural_cleanse(model, x[s.images * i:s.images * (i + 1)], epochs=s.epochs,
                               steps_per_epoch=s.steps_per_epoch, batch_size=s.batch_size, seed=ctx.cfg.seed + i,
                               progress=False) for i in range(s.repeats)]
        index = torch.tensor([r.model_anomaly_index for r in runs], dtype=torch.float64)
        rep = runs[int(index.argsort()[(len(runs) - 1) // 2])]
        flagged = torch.zeros(len(runs), len(rep.l1_norms), dtype=torch.bool)
        for i, r in enumerate(runs):
            flagged[i, r.flagged] = True
        return {"masks": rep.masks, "patterns": rep.patterns, "model_anomaly_index": index, "flagged": flagged,
                "l1_norms": torch.stack([r.l1_norms for r in runs]),
                "anomaly_index": torch.stack([r.anomaly_index for r in runs]),
                "threshold": torch.tensor(rep.threshold)}

    raw = _for_each_model(ctx, measure)
    per_model = {}
    for label, r in raw.items():
        index = r["model_anomaly_index"]
        rep = int(index.argsort()[(len(index) - 1) // 2])
        per_model[label] = {"model_anomaly_index": float(index[rep]), "threshold": float(r["threshold"]),
                            "flagged_classes": r["flagged"][rep].nonzero().flatten().tolist(),
                            "suspect_class": int(r["l1_norms"][rep].argmin()),
                            "l1_norms": r["l1_norms"][rep].tolist(), "anomaly_index": r["anomaly_index"][rep].tolist(),
                            "repeats": [[float(v), r["flagged"][i].nonzero().flatten().tolist()]
                                        for i, v in enumerate(index)]}
    triggers = {label: {"masks": r["masks"], "patterns": r["patterns"]} for label, r in raw.items()}
    return NeuralCleanseResults(per_model, dataclasses.asdict(s), triggers)


def measure_activation_clustering(ctx: RunContext) -> Measurements:
    """Stage ``activation_clustering``: Fang's Table 2 protocol (clean/triggered pairs, last hidden layer, PCA to 2
    dimensions, one 2-means split, misclustering rate)."""

    def measure(m: ModelUnderTest, model: nn.Module) -> dict:
        data = m.source.data
        n = min(ctx.cfg.activation_clustering.pairs, ctx.cfg.n_eval)
        x = data.x_test[:n]
        x = torch.cat([x, apply_trigger(m.source.trigger, x)])
        truth = torch.arange(2 * n) >= n
        one_class = torch.zeros(2 * n, dtype=torch.long)
        res = activation_clustering(head_inputs(model, x), one_class, reduce="pca", n_dims=2, random_state=ctx.cfg.seed)
        mis = misclustering(res, one_class, truth)
        return {"misclustering": mis.label_agnostic_rate, "verdict": mis.verdict, "pairs": n}

    return Measurements(_for_each_model(ctx, measure), dataclasses.asdict(ctx.cfg.activation_clustering))


def measure_fine_pruning(ctx: RunContext) -> Measurements:
    """Stage ``fine_pruning``: clean accuracy and the attack metric against the pruned fraction of the last conv
    block (Fang, Figure 4b)."""
    s = ctx.cfg.fine_pruning

    def measure(m: ModelUnderTest, model: nn.Module) -> dict:
        probe = _probe(ctx, m)
        key = attack_metric_name(m)
        metric = {key: lambda pruned: probe.metrics(pruned)[key]} if key in ctx["models"].baseline[m.label] else {}
        curve = pruning_curve(model, probe.x, probe.y, fractions=s.fractions, metrics=metric,
                              x_rank=m.source.data.x_train[:s.rank_images], progress=False)
        return {"fractions": curve.fractions, "accuracy": curve.clean_accuracy, "metric": key,
                "values": curve.metrics.get(key), "layer": curve.layer,
                "fraction_accuracy_kept": curve.fraction_at_accuracy_drop(s.max_accuracy_drop)}

    return Measurements(_for_each_model(ctx, measure), dataclasses.asdict(s))


def measure_tv_denoising(ctx: RunContext) -> Measurements:
    """Stage ``tv_denoising``: the run's metrics on Chambolle-denoised clean and triggered inputs (Fang, Table 3)."""
    s = ctx.cfg.tv_denoising

    def measure(m: ModelUnderTest, model: nn.Module) -> dict:
        probe = _probe(ctx, m)
        rows = []
        for w in s.weights:
            x = probe.x if w == 0 else tv_chambolle(probe.x, weight=w, n_iter=s.n_iter)
            x_trig = probe.x_trig if w == 0 else tv_chambolle(probe.x_trig, weight=w, n_iter=s.n_iter)
            rows.append({"weight": w, **probe.metrics(model, x, x_trig)})
        return {"rows": rows}

    return Measurements(_for_each_model(ctx, measure), dataclasses.asdict(s))


def measure_rebn(ctx: RunContext) -> Measurements:
    """Stage ``rebn``: metrics after re-estimating the BatchNorm statistics on clean training images, and how far
    the stored statistics were from the clean ones."""

    def measure(m: ModelUnderTest, model: nn.Module) -> dict:
        if not batchnorm_layers(model):
            return {"applicable": False}
        repaired = rebn(model, m.source.data.x_train[:ctx.cfg.rebn.images])
        shift = statistics_shift(model, repaired)
        return {"applicable": True, "before": ctx["models"].baseline[m.label],
                "after": _probe(ctx, m).metrics(repaired), "max_shift": max(shift.values()), "shift": shift}

    return Measurements(_for_each_model(ctx, measure), dataclasses.asdict(ctx.cfg.rebn))


def measure_input_detection(ctx: RunContext) -> Measurements:
    """Stage ``input_detection``: AUROC of triggered vs clean evaluation inputs (disjoint halves) for explanation
    consistency (each score, and combined with and without the trusted reference), STRIP and Spectral Signatures."""
    s = ctx.cfg.input_detection

    def measure(m: ModelUnderTest, model: nn.Module) -> dict:
        data, half, n_cal = m.source.data, ctx.cfg.n_eval // 2, s.calibration_images
        x = data.x_test[:2 * half]
        clean, trig = x[:half], apply_trigger(m.source.trigger, x[half:])
        reference = m.build(ctx["models"].references[m.label])
        det = ExplanationConsistency(model, explainers_for(model), reference=reference, seed=ctx.cfg.seed)
        det.fit(data.x_train[:n_cal])
        dc, dt = det.details(clean), det.details(trig)
        no_ref = [n for n in det.component_names if n != "reference"]
        out = {name: auroc(dc[name], dt[name]) for name in det.component_names}
        elementary = {k: auroc(dc[k], dt[k]) for k in dc if "/" in k}
        best = max(elementary, key=elementary.get)
        held_out = det.combine(det.details(data.x_train[n_cal:2 * n_cal]), no_ref)
        threshold = float(torch.quantile(held_out, 0.95))
        out.update({
            "combined_no_reference": auroc(det.combine(dc, no_ref), det.combine(dt, no_ref)),
            "combined_with_reference": auroc(det.combine(dc), det.combine(dt)),
            "combined_two_sided_no_reference": auroc(det.combine(dc, no_ref, two_sided=True),
                                                     det.combine(dt, no_ref, two_sided=True)),
            "best_elementary": [best, elementary[best]], "elementary": elementary,
            "detection_rate_no_reference": float((det.combine(dt, no_ref) > threshold).float().mean()),
            "fpr_no_reference": float((det.combine(dc, no_ref) > threshold).float().mean())})
        strip = STRIPDetector(model, n=s.strip_blends, blend="add", seed=ctx.cfg.seed).fit(data.x_train[:n_cal])
        out["strip"] = auroc(strip.score(clean), strip.score(trig))
        both = torch.cat([clean, trig])
        scores = spectral_signatures(head_inputs(model, both), predict(model, both).argmax(1)).scores
        out["spectral"] = auroc(scores[:half], scores[half:])
        return out

    return Measurements(_for_each_model(ctx, measure), dataclasses.asdict(s))


def measure_audit(ctx: RunContext) -> Measurements:
    """Stage ``audit``: ``xaisec audit`` on the test images after the evaluation images, with ``audit.suspects`` of
    them triggered; each model's audit page is kept under ``audits/<label>/``."""
    s = ctx.cfg.audit
    checks = tuple(s.checks) if s.checks is not None else DEFAULT_CHECKS

    def measure(m: ModelUnderTest, model: nn.Module) -> dict:
        d, n = m.source.data, ctx.cfg.n_eval
        data = ImageDataset(d.name, d.x_train, d.y_train, d.x_test[n:], d.y_test[n:], d.num_classes, d.class_names)
        suspects = apply_trigger(m.source.trigger, d.x_test[n:n + s.suspects])
        report = run_audit(model, data, out=ctx.rd / "audits" / m.label, budget=s.budget, checks=checks,
                           suspects=suspects, seed=ctx.cfg.seed, progress=False)
        found = report["checks"]
        model_level = [c for c in ("neural_cleanse", "fine_pruning", "rebn")
                       if c in found and found[c]["verdict"] == "suspicious"]
        nc = found.get("neural_cleanse", {}).get("evidence", {})
        return {"verdict": report["verdict"], "checks": {k: v["verdict"] for k, v in found.items()},
                "model_level_verdict": "suspicious" if model_level else "no evidence",
                "model_level_suspicious": model_level,
                "neural_cleanse": {k: nc[k] for k in ("model_anomaly_index", "flagged_classes") if k in nc},
                "seconds": report["seconds_per_check"]}

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
