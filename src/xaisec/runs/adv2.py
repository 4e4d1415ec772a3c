"""The ``adv2`` experiment kind: ADV² (Zhang et al., "Interpretable Deep Learning under Fire", USENIX Security
2020) from one config.

``prepare`` loads the data and builds the model and every interpreter once on two images (an untrained saver
stands in for the trained one), so user mistakes surface before the run directory exists. Stages:
``reference`` (the clean classifier, trained as in every kind) -> ``savers`` (the RTS saver) -> ``attack_set``
(attacked images, target classes, benign and target maps) -> ``pgd`` (PGD and PGD-based ADV2 against every
interpreter, Table 3 and Figures 4-6; the transfer matrix of Table 9) -> ``stadv`` (Sec. 6) -> ``detection``
(feature squeezing with the adaptive attack, Table 4; the interpreter ensemble) -> ``savers_adversarial``
(RTS^A, Sec. 7) -> ``rts_adversarial`` (ADV2 against RTS^A). Each attack inside a stage is cached
(``ctx.cached``), so a killed run loses no finished attack. What the stages share (typed results, interpreters,
savers, target maps, :class:`~xaisec.runs.adv2_tools.Bench`) is :mod:`xaisec.runs.adv2_tools`.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError, XaisecError
from ..evasion.config import Adv2Config
from ..evasion.evaluate import explain_batches, logits, transfer_matrix
from ..evasion.pgd import PGD
from ..evasion.stadv import StAdv, Adv2StAdv
from ..evasion.targets import pick_class_examples, random_target_classes
from ..maps import MapPostprocess
from ..records import Metric
from .adv2_tools import (Adv2Inputs, AttackSet, Attacks, Bench, SaverModel, attack_term, build_interpreter, new_saver,
                         random_patches, target_maps, train_saver)
from .common import (TrainedModel, check_reference_files, load_data, load_reference_start, model_factory,
                     train_reference)
from .runner import Experiment, RunContext, Stage, register_experiment

log = logging.getLogger(__name__)


def prepare(cfg: Adv2Config) -> Adv2Inputs:
    check_reference_files(cfg)  # a missing weights file fails before the data is read
    data = load_data(cfg)
    if data.multilabel or data.x_train.dim() != 4:
        raise DataError(f"the adv2 experiment needs single-label image data; {data.name} is "
                        f"{'multi-label' if data.multilabel else 'tabular'}")
    if data.num_classes < 2:
        raise DataError(f"a targeted attack needs at least two classes; {data.name} has {data.num_classes}")
    n_cal = cfg.detection.calibration_images if cfg.detection.enabled else 0
    if cfg.n_images + n_cal > len(data.x_test):
        raise ConfigError(f"n_images ({cfg.n_images}) + detection.calibration_images ({n_cal}) exceed the "
                          f"{len(data.x_test)} test images of {data.name}; lower them")
    make_model = model_factory(cfg, data)
    model = make_model().eval()
    load_reference_start(model, cfg)
    posts = {n: MapPostprocess(pool=cfg.map_pool, norm=cfg.settings(n).norm) for n in cfg.interpreters}
    saver = new_saver(cfg, model, data) if cfg.saver_interpreters() else None
    x2 = data.x_test[:2]
    for name in cfg.interpreters:
        try:
            explainer = build_interpreter(cfg, name, model, saver=saver)
            posts[name](explain_batches(explainer, x2, data.y_test[:2], 2))
            attack_term(cfg, name, explainer, posts[name], data)
        except XaisecError as exc:
            raise ConfigError(f"interpreter {name!r} does not fit {cfg.model.arch} on {data.name}: {exc}") from None
    return Adv2Inputs(data, make_model, posts)


# ---- savers -------------------------------------------------------------------------------------------------------
def savers(ctx: RunContext) -> SaverModel:
    """Stage ``savers``: the RTS saver."""
    return train_saver(ctx, "rts", ctx.cfg.rts.objective)


def savers_adversarial(ctx: RunContext) -> SaverModel:
    """Stage ``savers_adversarial``: RTS^A, the saver trained with the stability term (from scratch or from RTS)."""
    r = ctx.cfg.rts
    init = ctx["savers"] if r.adversarial_init == "rts" else None
    return train_saver(ctx, "rts_adv", dataclasses.replace(r.objective, adv_weight=r.adversarial_weight), init)


def attack_set(ctx: RunContext) -> AttackSet:
    """Stage ``attack_set``: ``n_images`` random correctly classified test images, a random other class for each,
    calibration images for the detectors, and every interpreter's benign and target maps."""
    cfg, data = ctx.cfg, ctx.inputs.data
    b = Bench(ctx)
    gen = torch.Generator().manual_seed(cfg.seed)
    test_pred = logits(b.model, data.x_test).argmax(1)
    correct = torch.nonzero(test_pred == data.y_test).flatten()
    correct = correct[torch.randperm(len(correct), generator=gen)]
    n_cal = cfg.detection.calibration_images if cfg.detection.enabled else 0
    if len(correct) < cfg.n_images + n_cal:
        raise DataError(f"only {len(correct)} correctly classified test images; lower n_images ({cfg.n_images}) or "
                        f"detection.calibration_images ({n_cal})")
    index = correct[:cfg.n_images]
    x, y = data.x_test[index], data.y_test[index]
    x_cal = data.x_test[correct[cfg.n_images:cfg.n_images + n_cal]]
    y_target = random_target_classes(y, data.num_classes, gen)
    pool_index = torch.zeros(0, dtype=torch.long)
    if cfg.target == "class":
        pool_correct = logits(b.model, data.x_train).argmax(1) == data.y_train
        pool_index = pick_class_examples(y_target, data.y_train, pool_correct, torch.Generator().manual_seed(cfg.seed + 2))
    benign = {n: b.maps(n, x, y) for n in cfg.interpreters}
    patches = random_patches(cfg, x) if cfg.target == "patch" else None
    targets = {n: target_maps(cfg, data, x, y_target, pool_index, benign[n],
                              lambda xs, t, n=n: b.maps(n, xs, t), patches) for n in cfg.interpreters}
    return AttackSet(index, x, y, y_target, x_cal, pool_index, benign, targets,
                     (test_pred == data.y_test).double().mean().item())


# ---- attack stages ------------------------------------------------------------------------------------------------
def pgd(ctx: RunContext) -> Attacks:
    """Stage ``pgd``: PGD, PGD-based ADV2 against each interpreter, and the transfer matrix (Table 9)."""
    b, cfg, out = Bench(ctx), ctx.cfg, Attacks()
    p = cfg.pgd
    plain = b.attack("pgd", PGD(b.model, b.objective(), eps=p.eps, step=p.step, steps=p.steps), read_by=b.explainers)
    b.keep(out, "pgd", plain)
    out.numbers["pgd"] = b.report(plain["x"], plain["maps"])
    out.numbers["adv2_pgd"], rows = {}, {}
    for name in cfg.interpreters:
        key = f"adv2_pgd-{name}"
        run = b.attack(key, b.adv2_pgd([b.term(name)]), {name: b.s.targets[name]},
                       b.explainers if cfg.transfer else {name: b.explainers[name]})
        b.keep(out, key, run, {name: run["maps"][name]})
        rows[f"ADV2->{name}"] = run["maps"]
        out.numbers["adv2_pgd"][name] = b.report(run["x"], {name: run["maps"][name]})
    if cfg.transfer:
        rows["PGD"] = plain["maps"]
        out.numbers["transfer"] = {"l1_vs_benign": transfer_matrix(rows, b.s.benign, b.posts),
                                   "l1_vs_target": transfer_matrix(rows, b.s.targets, b.posts)}
    return out


def stadv(ctx: RunContext) -> Attacks:
    """Stage ``stadv``: StAdv and StAdv-based ADV2 (Sec. 6) against ``stadv.interpreters`` (default: all)."""
    b, cfg, out = Bench(ctx), ctx.cfg, Attacks()
    st, p = cfg.stadv, cfg.pgd
    names = st.interpreters or cfg.interpreters
    plain = b.attack("stadv", StAdv(b.model, b.objective(), tau=st.tau, lr=st.lr, steps=st.steps, init=st.init,
                                    max_flow=st.max_flow, seed=cfg.seed), read_by={n: b.explainers[n] for n in names})
    b.keep(out, "stadv", plain)
    out.numbers["stadv"] = b.report(plain["x"], plain["maps"])
    out.numbers["adv2_stadv"] = {}
    for name in names:
        terms = [b.term(name)]
        attack = Adv2StAdv(b.model, terms, tau=st.tau, lr=st.lr, steps=st.steps, warmup=st.warmup,
                           c=b.c(terms, st.c), init=st.init, max_flow=st.max_flow, prd=p.prd,
                           label_smoothing=p.label_smoothing, seed=cfg.seed)
        key = f"adv2_stadv-{name}"
        run = b.attack(key, attack, {name: b.s.targets[name]}, {name: b.explainers[name]})
        b.keep(out, key, run)
        out.numbers["adv2_stadv"][name] = b.report(run["x"], run["maps"])
    return out


def _earlier_attacks(ctx: RunContext) -> dict[str, torch.Tensor]:
    return {k: v for stage in ("pgd", "stadv") if stage in ctx.results for k, v in ctx[stage].x_adv.items()}


def detection(ctx: RunContext) -> Attacks:
    """Stage ``detection``: feature squeezing (Table 4) on every earlier attack, the adaptive ADV2 against it, and
    the interpreter ensemble detector with the joint ADV2 against all its members."""
    from ..defenses.feature_squeezing import FeatureSqueezingDetector
    from ..defenses.interpreter_ensemble import InterpreterEnsembleDetector
    from ..evasion.detection import SqueezingCalibration

    b, cfg, out = Bench(ctx), ctx.cfg, Attacks()
    d, s = cfg.detection, b.s
    on = lambda t: t.to(b.device)  # noqa: E731  (the detectors run where the model is)
    calib = SqueezingCalibration(FeatureSqueezingDetector(b.model, d.squeezers, d.fpr), on(s.x_cal))
    earlier = _earlier_attacks(ctx)
    rates = {"benign": calib.rates(on(s.x)), **{k: calib.rates(on(v)) for k, v in earlier.items()}}
    adaptive = {}
    for name in d.adaptive:
        key = f"adv2_pgd_adaptive-{name}"
        attack = b.adv2_pgd([b.term(name)], detector=calib.hinge_term(d.hinge), detector_weight=d.adaptive_weight)
        run = b.attack(key, attack, {name: s.targets[name]}, {name: b.explainers[name]})
        b.keep(out, key, run)
        rates[key] = calib.rates(on(run["x"]))
        adaptive[name] = b.report(run["x"], run["maps"])
    out.numbers["feature_squeezing"] = {"squeezers": calib.names, "fpr": d.fpr, "thresholds": calib.thresholds.tolist(),
                                        "joint_threshold": calib.detector.threshold, "calibration_images": len(s.x_cal),
                                        "rates": rates, "adaptive_attack": adaptive}
    if d.ensemble:
        members = {m: b.explainers[m] for m in d.ensemble}
        detector = InterpreterEnsembleDetector(b.model, members, b.posts, d.ensemble_metric, fpr=d.fpr,
                                               batch_size=cfg.batch_size).fit(on(s.x_cal))
        key = "adv2_pgd-ensemble"
        run = b.attack(key, b.adv2_pgd([b.term(m) for m in d.ensemble]), {m: s.targets[m] for m in d.ensemble}, members)
        b.keep(out, key, run)
        flagged = {"benign": s.x, "pgd": earlier["pgd"], **{f"adv2_pgd-{m}": earlier[f"adv2_pgd-{m}"] for m in d.ensemble},
                   key: run["x"]}
        out.numbers["ensemble"] = {"members": list(d.ensemble), "metric": d.ensemble_metric,
                                   "threshold": detector.threshold,
                                   "rates": {k: detector.detect(on(v)).double().mean().item()
                                             for k, v in flagged.items()},
                                   "joint_attack": b.report(run["x"], run["maps"])}
    return out


def _noise(x: torch.Tensor, kind: str, level: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(x.shape, generator=gen) if kind == "normal" else 2 * torch.rand(x.shape, generator=gen) - 1
    return (x + level * z.to(x)).clamp(0, 1)


def rts_adversarial(ctx: RunContext) -> Attacks:
    """Stage ``rts_adversarial``: for each saver-based interpreter, ADV2 against its RTS^A version, RTS^A reading
    the inputs crafted against the plain one, and both versions' map change under random noise."""
    b, cfg, out = Bench(ctx), ctx.cfg, Attacks()
    s, data = b.s, ctx.inputs.data
    saver = ctx["savers_adversarial"].saver(b.device)
    for name in cfg.saver_interpreters():
        e_adv = build_interpreter(cfg, name, b.model, saver=saver)
        benign = {name: b.maps(name, s.x, s.y, e_adv)}
        targets = {name: target_maps(cfg, data, s.x, s.y_target, s.pool_index, benign[name],
                                     lambda xs, t: b.maps(name, xs, t, e_adv), s.targets[name])}
        key = f"adv2_pgd-{name}_adv"
        run = b.attack(key, b.adv2_pgd([b.term(name, e_adv)]), targets, {name: e_adv})
        b.keep(out, key, run)
        out.maps[f"benign-{name}_adv"] = {name: benign[name][:cfg.figure_images]}
        out.maps[f"target-{name}_adv"] = {name: targets[name][:cfg.figure_images]}
        x_plain = ctx["pgd"].x_adv[f"adv2_pgd-{name}"]  # crafted against the plain interpreter, read by RTS^A
        crafted = b.report(x_plain, {name: b.maps(name, x_plain, explainer=e_adv)}, benign, targets)["maps"][name]
        sensitivity = {}
        for kind in ("normal", "uniform"):
            for level in cfg.rts.noise_levels:
                noisy = _noise(s.x, kind, level, cfg.seed)
                row = {}
                for label, e, ref in ((name, b.explainers[name], s.benign[name]), (f"{name}_adv", e_adv, benign[name])):
                    maps = b.maps(name, noisy, s.y, e)
                    l1 = b.report(noisy, {name: maps}, {name: ref}, {name: ref}, s.y)["maps"][name]["vs_benign"]["l1"]
                    mass = b.posts[name](ref).mean().item()  # RTS^A masks may be larger: the change relative to mass
                    row[label], row[f"{label}_relative"] = l1, l1 / max(mass, 1e-8)
                sensitivity[f"{kind}_{level:g}"] = row
        out.numbers[name] = {"adversarial": b.report(run["x"], run["maps"], benign, targets),
                             "crafted_against_plain": crafted, "noise_sensitivity_l1": sensitivity}
    return out


# ---- the kind -----------------------------------------------------------------------------------------------------
def _uses_saver(cfg: Adv2Config) -> bool:
    return bool(cfg.saver_interpreters())


def _rts_adversarial(cfg: Adv2Config) -> bool:
    return cfg.rts.adversarial and _uses_saver(cfg)


def context(ctx: RunContext) -> dict[str, Any]:
    """Setup and timing for ``metrics.json`` and the report."""
    cfg, data, s = ctx.cfg, ctx.inputs.data, ctx["attack_set"]
    seconds = {k: v for stage in ("pgd", "stadv", "detection", "rts_adversarial") if stage in ctx.results
               for k, v in ctx[stage].seconds.items()}
    out = {"dataset": data.summary(), "arch": cfg.model.arch, "test_accuracy": s.test_accuracy,
           "n_images": len(s.x), "target": cfg.target, "eps": cfg.pgd.eps,
           "map_postprocess": {n: p.describe() for n, p in ctx.inputs.posts.items()},
           "interpreters": list(cfg.interpreters), "class_names": list(data.class_names)}
    if "savers" in ctx.results:
        out["rts_saver"] = ctx["savers"].description
    if "savers_adversarial" in ctx.results:
        out["rts_adv_saver"] = f"{ctx['savers_adversarial'].description}, adversarially trained " \
                               f"(init: {cfg.rts.adversarial_init}, stability weight {cfg.rts.adversarial_weight:g})"
    if "detection" in ctx.results:
        out["squeezers"] = ctx["detection"].numbers["feature_squeezing"]["squeezers"]
    out["timing_s"] = seconds
    out["images_per_second"] = {k: len(s.x) / v for k, v in seconds.items() if v > 0}
    return out


@register_experiment
class Adv2Experiment(Experiment):
    """Classifier -> RTS saver -> attacked images -> PGD / StAdv / adaptive ADV2 -> RTS^A -> report."""

    name = "adv2"
    schema = Adv2Config
    stages = (Stage("reference", TrainedModel, train_reference),
              Stage("savers", SaverModel, savers, _uses_saver),
              Stage("attack_set", AttackSet, attack_set),
              Stage("pgd", Attacks, pgd),
              Stage("stadv", Attacks, stadv, lambda cfg: cfg.stadv.enabled),
              Stage("detection", Attacks, detection, lambda cfg: cfg.detection.enabled),
              Stage("savers_adversarial", SaverModel, savers_adversarial, _rts_adversarial),
              Stage("rts_adversarial", Attacks, rts_adversarial, _rts_adversarial))

    def prepare(self, cfg: Adv2Config) -> Adv2Inputs:
        return prepare(cfg)

    def metrics(self, ctx: RunContext) -> tuple[dict[str, Metric], dict[str, Any]]:
        from ..evasion import results

        records = results.pgd_records(ctx["pgd"].numbers)
        for stage, flatten in (("stadv", results.stadv_records), ("detection", results.detection_records),
                               ("rts_adversarial", results.rts_adversarial_records)):
            if stage in ctx.results:
                records.update(flatten(ctx[stage].numbers))
        return records, context(ctx)

    def report(self, run_dir: Path) -> Path:
        from ..evasion.report import build_report

        return build_report(run_dir)

    def headline(self, metrics: dict[str, Metric]) -> list[str]:
        from ..evasion.report import headline

        return headline(metrics)
