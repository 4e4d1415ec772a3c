"""The ``adv2`` experiment: ``xaisec run configs/adv2_*.yaml`` or :func:`run_adv2` (Zhang et al. 2020,
https://arxiv.org/abs/1812.00891).

Stages: classifier and RTS saver -> attacked images and target maps -> PGD and PGD-based ADV2 against every
interpreter (Table 3, Figures 4-6) with the transfer matrix (Table 9) -> StAdv and StAdv-based ADV2 (Sec. 6)
-> feature squeezing with the adaptive attack (Table 4) and the interpreter ensemble -> adversarially trained
RTS (Sec. 8). Writes ``metrics.json``, figures and ``report.html`` into the run directory.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from ..config import dump_config
from ..experiments import EXPERIMENTS, ExperimentKind
from ..explainers import Explainer
from ..io import atomic_write_json
from ..rundir import RunDir
from .config import Adv2Config
from .evaluate import attack_report, in_batches, transfer_matrix
from .objective import AttackObjective, InterpreterTerm
from .pgd import PGD, Adv2PGD
from .report import build_report, make_figures
from .setup import Adv2Setup
from .stadv import StAdv, Adv2StAdv

log = logging.getLogger(__name__)


def _run(s: Adv2Setup, key: str, attack, targets: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    kwargs = {"target_maps": targets} if targets else {}
    return s.cached(key, lambda: in_batches(lambda xb, yb, **kw: attack(xb, yb, **kw), s.cfg.batch_size,
                                            s.x, s.y_target, **kwargs))


def _all_maps(s: Adv2Setup, x_adv: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    return {n: s.maps(n, x_adv) for n in (names or s.cfg.interpreters)}


def _c(s: Adv2Setup, terms: Sequence[InterpreterTerm], default: float) -> float:
    own = [s.cfg.settings(t.name).c for t in terms]
    return own[0] if len(terms) == 1 and own[0] is not None else default


def adv2_pgd(s: Adv2Setup, terms: Sequence[InterpreterTerm], detector=None, detector_weight: float = 0.0) -> Adv2PGD:
    p = s.cfg.pgd
    return Adv2PGD(s.model, terms, eps=p.eps, step=p.step, steps=p.steps, warmup=p.warmup, c=_c(s, terms, p.c),
                   c_end=p.c_end, prd=p.prd, label_smoothing=p.label_smoothing, detector=detector,
                   detector_weight=detector_weight)


def pgd_stage(s: Adv2Setup, metrics: dict) -> dict[str, torch.Tensor]:
    """PGD baseline and PGD-based ADV2 against each interpreter; the transfer matrix."""
    cfg, p = s.cfg, s.cfg.pgd
    report = lambda x_adv, maps, benign=s.benign, targets=s.targets: attack_report(  # noqa: E731
        s.model, s.x, x_adv, s.y_target, maps, benign, targets, s.posts, cfg.iou_ks)
    plain = PGD(s.model, AttackObjective(s.model, prd=p.prd, label_smoothing=p.label_smoothing), eps=p.eps,
                step=p.step, steps=p.steps)
    x_pgd = _run(s, "pgd", plain)
    s.adv = {"pgd": x_pgd}
    maps_pgd = _all_maps(s, x_pgd)
    metrics["pgd"] = report(x_pgd, maps_pgd)
    metrics["adv2_pgd"], adv_maps = {}, {}
    for name in cfg.interpreters:
        x_adv = _run(s, f"adv2_pgd-{name}", adv2_pgd(s, [s.term(name)]), {name: s.targets[name]})
        s.adv[f"adv2_pgd-{name}"] = x_adv
        adv_maps[name] = _all_maps(s, x_adv, None if cfg.transfer else [name])
        metrics["adv2_pgd"][name] = report(x_adv, {name: adv_maps[name][name]})
    s.maps_cache = {"pgd": maps_pgd, **{f"adv2_pgd-{n}": m for n, m in adv_maps.items()}}
    if cfg.transfer:
        rows = {**{f"ADV2->{n}": m for n, m in adv_maps.items()}, "PGD": maps_pgd}
        metrics["transfer"] = {"l1_vs_benign": transfer_matrix(rows, s.benign, s.posts),
                               "l1_vs_target": transfer_matrix(rows, s.targets, s.posts)}
    return s.adv


def stadv_stage(s: Adv2Setup, metrics: dict) -> None:
    """StAdv baseline and StAdv-based ADV2 (Sec. 6)."""
    cfg, st = s.cfg, s.cfg.stadv
    names = st.interpreters or cfg.interpreters
    plain = StAdv(s.model, AttackObjective(s.model, prd=cfg.pgd.prd, label_smoothing=cfg.pgd.label_smoothing), tau=st.tau, lr=st.lr, steps=st.steps,
                  init=st.init, max_flow=st.max_flow, seed=cfg.seed)
    x_st = _run(s, "stadv", plain)
    s.adv["stadv"] = x_st
    maps_st = _all_maps(s, x_st, names)
    s.maps_cache["stadv"] = maps_st
    metrics["stadv"] = attack_report(s.model, s.x, x_st, s.y_target, maps_st, s.benign, s.targets, s.posts, cfg.iou_ks)
    metrics["adv2_stadv"] = {}
    for name in names:
        terms = [s.term(name)]
        attack = Adv2StAdv(s.model, terms, tau=st.tau, lr=st.lr, steps=st.steps, warmup=st.warmup,
                           c=_c(s, terms, st.c), init=st.init, max_flow=st.max_flow, prd=cfg.pgd.prd,
                           label_smoothing=cfg.pgd.label_smoothing, seed=cfg.seed)
        x_adv = _run(s, f"adv2_stadv-{name}", attack, {name: s.targets[name]})
        s.adv[f"adv2_stadv-{name}"] = x_adv
        maps = {name: s.maps(name, x_adv)}
        s.maps_cache[f"adv2_stadv-{name}"] = maps
        metrics["adv2_stadv"][name] = attack_report(s.model, s.x, x_adv, s.y_target, maps, s.benign, s.targets,
                                                    s.posts, cfg.iou_ks)


def detection_stage(s: Adv2Setup, metrics: dict) -> None:
    """Feature squeezing (Table 4) with the adaptive ADV2, and the interpreter ensemble detector."""
    from ..defenses.feature_squeezing import FeatureSqueezingDetector
    from ..defenses.interpreter_ensemble import InterpreterEnsembleDetector
    from .detection import SqueezingCalibration

    cfg, d = s.cfg, s.cfg.detection
    out: dict = {}
    calib = SqueezingCalibration(FeatureSqueezingDetector(s.model, d.squeezers, d.fpr), s.x_cal)
    rates = {"benign": calib.rates(s.x), **{k: calib.rates(v) for k, v in s.adv.items()}}
    adaptive = {}
    for name in d.adaptive:
        attack = adv2_pgd(s, [s.term(name)], detector=calib.hinge_term(d.hinge), detector_weight=d.adaptive_weight)
        x_adv = _run(s, f"adv2_pgd_adaptive-{name}", attack, {name: s.targets[name]})
        s.adv[f"adv2_pgd_adaptive-{name}"] = x_adv
        rates[f"adv2_pgd_adaptive-{name}"] = calib.rates(x_adv)
        adaptive[name] = attack_report(s.model, s.x, x_adv, s.y_target, {name: s.maps(name, x_adv)}, s.benign,
                                       s.targets, s.posts, cfg.iou_ks)
    out["feature_squeezing"] = {"squeezers": calib.names, "fpr": d.fpr, "thresholds": calib.thresholds.tolist(),
                                "joint_threshold": calib.detector.threshold, "calibration_images": len(s.x_cal),
                                "rates": rates, "adaptive_attack": adaptive}
    if d.ensemble:
        members = {m: s.explainers[m] for m in d.ensemble}
        detector = InterpreterEnsembleDetector(s.model, members, s.posts, d.ensemble_metric, fpr=d.fpr,
                                               batch_size=cfg.batch_size).fit(s.x_cal)
        x_all = _run(s, "adv2_pgd-ensemble", adv2_pgd(s, [s.term(m) for m in d.ensemble]),
                     {m: s.targets[m] for m in d.ensemble})
        s.adv["adv2_pgd-ensemble"] = x_all
        flagged = {"benign": s.x, "pgd": s.adv["pgd"], **{f"adv2_pgd-{m}": s.adv[f"adv2_pgd-{m}"] for m in d.ensemble},
                   "adv2_pgd-ensemble": x_all}
        out["ensemble"] = {"members": list(d.ensemble), "metric": d.ensemble_metric, "threshold": detector.threshold,
                           "rates": {k: detector.detect(v).double().mean().item() for k, v in flagged.items()},
                           "joint_attack": attack_report(s.model, s.x, x_all, s.y_target, _all_maps(s, x_all, d.ensemble),
                                                         s.benign, s.targets, s.posts, cfg.iou_ks)}
    metrics["detection"] = out


def _noise(x: torch.Tensor, kind: str, level: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(x.shape, generator=gen) if kind == "normal" else 2 * torch.rand(x.shape, generator=gen) - 1
    return (x + level * z.to(x)).clamp(0, 1)


def rts_defense_stage(s: Adv2Setup, metrics: dict) -> None:
    """RTS vs adversarially trained RTS^A: ADV2 against each, cross-evaluation and sensitivity to noise."""
    cfg = s.cfg
    saver_adv = s.adversarial_saver()
    e_adv: Explainer = s.explainer("rts", saver_adv)
    benign_adv = s.maps("rts", s.x, s.y, e_adv)
    targets_adv = s.target_maps("rts", e_adv)
    x_adv = _run(s, "adv2_pgd-rts_adv", adv2_pgd(s, [s.term("rts", e_adv)]), {"rts": targets_adv})
    s.adv["adv2_pgd-rts_adv"] = x_adv
    maps_adv = {"rts": s.maps("rts", x_adv, None, e_adv)}
    s.maps_cache["adv2_pgd-rts_adv"] = maps_adv
    out = {"rts": metrics["adv2_pgd"]["rts"],
           "rts_adv": attack_report(s.model, s.x, x_adv, s.y_target, maps_adv, {"rts": benign_adv},
                                    {"rts": targets_adv}, s.posts, cfg.iou_ks)}
    x_plain = s.adv["adv2_pgd-rts"]  # crafted against plain RTS, read by RTS^A
    out["rts_adv_on_inputs_crafted_against_rts"] = attack_report(
        s.model, s.x, x_plain, s.y_target, {"rts": s.maps("rts", x_plain, None, e_adv)}, {"rts": benign_adv},
        {"rts": targets_adv}, s.posts, cfg.iou_ks)["maps"]["rts"]
    sensitivity = {}
    for kind in ("normal", "uniform"):
        for level in cfg.rts.noise_levels:
            noisy = _noise(s.x, kind, level, cfg.seed)
            row = {}
            for label, e, ref in (("rts", s.explainers["rts"], s.benign["rts"]), ("rts_adv", e_adv, benign_adv)):
                l1 = attack_report(s.model, s.x, noisy, s.y, {"rts": s.maps("rts", noisy, s.y, e)}, {"rts": ref},
                                   {"rts": ref}, s.posts, cfg.iou_ks)["maps"]["rts"]["vs_benign"]["l1"]
                mass = s.posts["rts"](ref).mean().item()  # RTS^A masks may be larger: also report the change
                row[label], row[f"{label}_relative"] = l1, l1 / max(mass, 1e-8)  # relative to the map's mass
            sensitivity[f"{kind}_{level:g}"] = row
    out["noise_sensitivity_l1"] = sensitivity
    s.rts_adv_maps = {"benign": benign_adv, "target": targets_adv}
    metrics["rts_adversarial"] = out


def run_adv2(cfg: Adv2Config, run_dir: str | Path, resume: bool = False) -> Path:
    """Run the whole experiment into ``run_dir``; ``resume`` reuses the cached models and adversarial batches."""
    rd = RunDir(run_dir)
    if not resume:
        rd.create(dump_config(cfg), cfg.seed)
    try:
        rd.set_status("running", stage="setup")
        s = Adv2Setup(cfg, rd.path, resume)
        metrics: dict = {"setup": {"dataset": cfg.dataset, "arch": cfg.classifier.arch, "test_accuracy": s.test_accuracy,
                                   "n_images": len(s.x), "target": cfg.target, "eps": cfg.pgd.eps,
                                   "map_postprocess": {n: p.describe() for n, p in s.posts.items()},
                                   "interpreters": list(cfg.interpreters)}}
        if "rts" in s.savers:
            metrics["setup"]["rts_saver"] = s.savers["rts"].describe()
        stages = [("pgd", pgd_stage, True), ("stadv", stadv_stage, cfg.stadv.enabled),
                  ("detection", detection_stage, cfg.detection.enabled),
                  ("rts_adversarial", rts_defense_stage, "rts" in cfg.interpreters and cfg.rts.adversarial)]
        for stage, fn, enabled in stages:
            if enabled:
                rd.set_status("running", stage=stage)
                fn(s, metrics)
        metrics["timing_s"] = dict(s.timing)
        metrics["images_per_second"] = {k: len(s.x) / v for k, v in s.timing.items()
                                        if not k.startswith("train_") and v > 0}
        atomic_write_json(rd / "metrics.json", metrics)
        rd.set_status("running", stage="report")
        make_figures(s, metrics)
        report = build_report(rd.path)
        rd.set_status("finished", stage="done", report=report.name)
    except BaseException as exc:
        rd.set_status("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                      error=f"{type(exc).__name__}: {exc}")
        raise
    log.info("adv2 run written to %s", rd.path)
    return rd.path


EXPERIMENTS.register("adv2")(ExperimentKind(Adv2Config, run_adv2, report=build_report))
