"""The ``backdoor`` experiment kind: config -> run directory (reference model, attack, evaluation, report).

Stages: ``prepare`` (load and check everything: data, model, trigger, explainers; no training yet) ->
``reference`` (train or reuse the clean model) -> ``attack`` (fine-tune from it, ``w <- w_ref``, on clean plus
poisoned samples) -> ``evaluate`` (ReLU model, held-out split) -> ``report``. Both training stages checkpoint every
epoch; ``run_backdoor(cfg, run_dir, resume=True)`` continues where a killed run stopped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save
from torch import nn

from ..config import dump_config
from ..data import ImageDataset, load_dataset
from ..errors import ConfigError, DataError, XaisecError
from ..experiments import EXPERIMENTS, ExperimentKind
from ..explainers import explain_all
from ..io import atomic_write_bytes, atomic_write_json, load_weights, save_weights
from ..maps import downsample, normalize
from ..models import build_model
from ..rundir import RunDir
from ..train import TensorBatches, cross_entropy, eval_mode
from ..triggers import build_trigger
from .config import BackdoorConfig
from .evaluate import EvalSetup, default_threshold
from .goals import build_goal, pooled_maps
from .objectives import LOSS_EPS, ExplanationAwareObjective, LossSettings, needs_smooth_activations
from .poison import apply_trigger, poison_training_set
from .recipes import Recipe
from .results import collect_metrics, metrics_document, model_outputs, sample_tensors
from .stages import Stage, schedule, write_log
from .stopping import EarlyStopping

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Everything checked before any training."""

    cfg: BackdoorConfig
    data: ImageDataset
    recipe: Recipe
    trigger: nn.Module
    make_model: Callable[[], nn.Module]
    setup: EvalSetup


def _subset(data: ImageDataset, train: int | None, test: int | None) -> ImageDataset:
    if train is None and test is None:
        return data
    return ImageDataset(data.name, data.x_train[:train], data.y_train[:train], data.x_test[:test], data.y_test[:test],
                        data.num_classes, data.class_names)


def prepare(cfg: BackdoorConfig) -> Prepared:
    """Load the data, build model, trigger and explainers once on two images: every user mistake surfaces here."""
    torch.manual_seed(cfg.seed)
    a = cfg.attack
    data = _subset(load_dataset(cfg.data.name, **cfg.data.options), cfg.data.train_size, cfg.data.test_size)
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

    def make_model() -> nn.Module:
        torch.manual_seed(cfg.seed)
        return build_model(cfg.model.arch, data.input_shape, data.num_classes, **cfg.model.options)

    model = make_model()
    try:
        with eval_mode(model):
            for options in (a.explainer_options, cfg.eval.explainer_options):
                out = explain_all(model, x2, None, list(recipe.explainers), options=_options(options))
            for name in recipe.explainers:
                downsample(out.maps[name], a.pool)
    except XaisecError as exc:
        raise ConfigError(f"attack.explainers {list(recipe.explainers)} do not fit {cfg.model.arch} on "
                          f"{data.name}: {exc}") from None
    thresholds = {name: float(cfg.eval.thresholds.get(name, default_threshold(name, recipe.attack_type)))
                  for name in recipe.explainers}
    setup = EvalSetup(recipe=recipe, explainers=list(recipe.explainers), y=data.y_test, target_label=a.target_label,
                      trigger_mask=trigger.mask(data.x_test.shape), pool=a.pool, thresholds=thresholds,
                      target_map=a.target_map, target_options=a.target_map_options, topk=a.topk, iou_k=cfg.eval.iou_k)
    return Prepared(cfg, data, recipe, trigger, make_model, setup)


def _options(options: dict[str, dict]) -> dict[str, dict]:
    return {name: dict(opts) for name, opts in options.items()}


class BackdoorRun:
    """One run of :class:`BackdoorConfig` in ``run_dir``."""

    def __init__(self, prep: Prepared, run_dir: Path, progress: bool = True):
        self.prep, self.cfg, self.rd, self.progress = prep, prep.cfg, RunDir(run_dir), progress
        self.stages = {name: Stage(name, self.rd) for name in ("reference", "attack")}
        for stage in self.stages.values():
            stage.restore_history()

    def _log(self) -> None:
        write_log(self.rd, *self.stages.values())

    # -- stages ------------------------------------------------------------------------------------------
    def reference(self) -> nn.Module:
        cfg, data, path = self.cfg.reference, self.prep.data, self.rd / "reference.safetensors"
        model = self.prep.make_model()
        if path.is_file():
            return load_weights(model, path).eval()
        if cfg.weights is not None:
            load_weights(model, cfg.weights)
            log.info("reference: reusing %s", cfg.weights)
        else:
            log.info("reference: training %s on %s", self.cfg.model.arch, data.summary())
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            batches = TensorBatches(data.x_train, data.y_train, batch_size=cfg.batch_size, seed=self.cfg.seed)
            self.stages["reference"].train(model, batches, cross_entropy, optimizer, cfg.epochs, cfg.lr,
                                           schedule("cosine", cfg.epochs), progress=self.progress, on_log=self._log)
        save_weights(model, path, metadata={"stage": "reference"})
        return model.eval()

    def attack(self, reference: nn.Module) -> nn.Module:
        cfg, a, recipe, data = self.cfg, self.cfg.attack, self.prep.recipe, self.prep.data
        path = self.rd / "attacked.safetensors"
        model = self.prep.make_model()
        model.load_state_dict(reference.state_dict())  # w <- w_ref
        if path.is_file():
            return load_weights(model, path).eval()
        poisoned = poison_training_set(data.x_train, data.y_train, self.prep.trigger, recipe.poison_rate,
                                       recipe.changes_labels, a.target_label, seed=cfg.seed)
        log.info("attack: %s on %d clean + %d triggered images (%s)", recipe.name, len(data.x_train),
                 int(poisoned.poisoned.sum()), self.prep.trigger.describe())
        preserve, goals = {}, {}
        beta = a.softplus_beta if needs_smooth_activations(model, recipe.explainers, a.explainer_options) else None
        if recipe.explanation_aware:  # the reference maps of the fixed training set, computed once
            raw = pooled_maps(reference, data.x_train, data.y_train, list(recipe.explainers), a.pool,
                              softplus_beta=beta, options=_options(a.explainer_options))
            for name, maps in raw.items():
                preserve[name] = normalize(maps, recipe.norm, eps=LOSS_EPS)
                goals[name] = build_goal(recipe, normalize(maps, "minmax", eps=LOSS_EPS), recipe.norm, a.target_map,
                                         a.target_map_options, a.topk)
        objective = ExplanationAwareObjective(recipe, recipe.explainers, preserve, goals, a.pool,
                                              LossSettings(a.alpha, a.beta, a.lam, a.distance), a.weights,
                                              beta, _options(a.explainer_options))
        optimizer = torch.optim.Adam(model.parameters(), lr=a.lr, eps=a.adam_eps)
        batches = TensorBatches(*poisoned.tensors(), batch_size=a.batch_size, seed=cfg.seed)
        stopper = EarlyStopping(cfg.stopping.window, cfg.stopping.acc_tol, cfg.stopping.map_tol,
                                cfg.stopping.abort_epochs, cfg.stopping.abort_acc) if recipe.early_stopping else None
        self.stages["attack"].train(model, batches, objective, optimizer, a.epochs, a.lr,
                                    schedule(a.schedule, a.epochs, a.step_size, a.gamma),
                                    freeze_batchnorm=a.freeze_batchnorm, monitor=self._monitor(reference),
                                    stopper=stopper, progress=self.progress, on_log=self._log)
        save_weights(model, path, metadata={"stage": "attack", "recipe": recipe.name})
        return model.eval()

    def _monitor(self, reference: nn.Module) -> Callable[[nn.Module], dict[str, float]]:
        """Per-epoch quality on a fixed slice of the training images, with the ReLU model (early stopping)."""
        prep, n = self.prep, self.cfg.stopping.monitor_size
        x, y = prep.data.x_train[:n], prep.data.y_train[:n]
        x_trig = apply_trigger(prep.trigger, x)
        setup, opts = prep.setup, _options(self.cfg.eval.explainer_options)
        ref = model_outputs(reference, x, x_trig, setup.explainers, opts)
        ref01 = {k: normalize(downsample(v, setup.pool), "minmax") for k, v in ref.maps_clean.items()}
        goals = {k: build_goal(prep.recipe, v, "minmax", setup.target_map, setup.target_options, setup.topk)
                 for k, v in ref01.items()}
        idx = torch.arange(len(x))

        def monitor(model: nn.Module) -> dict[str, float]:
            out = model_outputs(model, x, x_trig, setup.explainers, opts)
            record = {"monitor/acc_clean": (out.logits_clean.argmax(1) == y).float().mean().item()}
            pred_trig = out.logits_trig.argmax(1)
            record["monitor/acc_trig"] = (pred_trig == y).float().mean().item()
            if prep.recipe.changes_labels:
                keep = y != setup.target_label
                record["monitor/asr"] = (pred_trig[keep] == setup.target_label).float().mean().item()
            for name in setup.explainers:
                clean = normalize(downsample(out.maps_clean[name], setup.pool), "minmax")
                trig = normalize(downsample(out.maps_trig[name], setup.pool), "minmax")
                keep_maps, attack_maps = (trig, clean) if prep.recipe.inverted else (clean, trig)
                record[f"monitor/{name}/map_keep"] = (keep_maps - ref01[name]).pow(2).mean().item()
                if goals[name] is not None:
                    record[f"monitor/{name}/map_goal"] = goals[name].loss(attack_maps, idx).mean().item()
            return record

        return monitor

    def evaluate(self, reference: nn.Module, attacked: nn.Module) -> dict:
        prep, data = self.prep, self.prep.data
        x_trig = apply_trigger(prep.trigger, data.x_test)
        opts = _options(self.cfg.eval.explainer_options)
        outputs = {"reference": model_outputs(reference, data.x_test, x_trig, prep.setup.explainers, opts,
                                              self.cfg.eval.batch_size),
                   "attacked": model_outputs(attacked, data.x_test, x_trig, prep.setup.explainers, opts,
                                             self.cfg.eval.batch_size)}
        metrics = collect_metrics(outputs, prep.setup)
        stage = self.stages["attack"]
        extra = {"trigger": prep.trigger.describe(), "dataset": data.summary(), "arch": self.cfg.model.arch,
                 "attack_epochs": len(stage.history), "stop_reason": stage.stop_reason,
                 "class_names": data.class_names}
        doc = metrics_document(metrics, prep.setup, extra)
        samples = sample_tensors(data.x_test, x_trig, data.y_test, outputs, prep.setup, self.cfg.eval.samples)
        atomic_write_bytes(self.rd / "samples.safetensors", save(samples))
        atomic_write_json(self.rd / "metrics.json", doc)
        return doc

    def run(self) -> Path:
        from .report import build_report

        try:
            self.rd.set_status("running", stage="reference")
            reference = self.reference()
            self.rd.set_status("running", stage="attack")
            attacked = self.attack(reference)
            self._log()
            self.rd.set_status("running", stage="evaluate")
            self.evaluate(reference, attacked)
            self.rd.set_status("running", stage="report")
            report = build_report(self.rd.path, state="finished")
            self.rd.set_status("finished", stage="done", report=report.name)
        except BaseException as exc:
            self.rd.set_status("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                               error=f"{type(exc).__name__}: {exc}")
            raise
        return self.rd.path


def run_backdoor(cfg: BackdoorConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Run (or with ``resume``, continue) the experiment ``cfg`` in ``run_dir``; returns the run directory."""
    prep = prepare(cfg)
    rd = RunDir(run_dir)
    if not resume:
        rd.create(dump_config(cfg), cfg.seed)
    return BackdoorRun(prep, rd.path, progress).run()


def _report(run_dir: str | Path) -> Path:
    from .report import build_report

    return build_report(run_dir)


EXPERIMENTS.register("backdoor")(ExperimentKind(BackdoorConfig, run_backdoor, report=_report))
