"""One model's measurements in the protocol of Fang & Choromanska ("Backdoor Attacks on the DNN Interpretation
System", AAAI 2022, Tables 2-3, Figure 4), as plain functions of a model and images; the ``fang_defenses``
experiment kind (:mod:`xaisec.runs.defenses`) runs them over every model of a set of backdoor runs.

Each returns JSON-able numbers (rates in [0,1]), except :func:`neural_cleanse_sets` (tensors, for the figures).
A :class:`Probe` holds what the backdoor evaluation needs to score any (repaired, pruned) model on a run's images.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..audit import run_audit
from ..audit.checks_inputs import explainers_for, head_inputs
from ..backdoor.evaluate import EvalSetup, ModelOutputs
from ..backdoor.results import collect_metrics, model_outputs
from ..data import ImageDataset
from ..train import predict
from .activation_clustering import activation_clustering, misclustering
from .explanation_consistency import ExplanationConsistency, auroc
from .fine_pruning import pruning_curve
from .neural_cleanse import neural_cleanse
from .rebn import batchnorm_layers, rebn, statistics_shift
from .spectral_signatures import spectral_signatures
from .strip import STRIPDetector
from .tv_denoise import tv_chambolle


@dataclass(frozen=True)
class Probe:
    """A run's evaluation images ``x`` (N,C,H,W) in [0,1], labels ``y`` (N,), triggered ``x_trig``, its evaluation
    setup and explainer options, and its clean reference model's outputs on them."""

    x: torch.Tensor
    y: torch.Tensor
    x_trig: torch.Tensor
    setup: EvalSetup
    options: dict[str, dict]
    reference: ModelOutputs

    @classmethod
    def build(cls, reference: nn.Module, x: torch.Tensor, y: torch.Tensor, x_trig: torch.Tensor, setup: EvalSetup,
              options: dict[str, dict]) -> "Probe":
        setup = dataclasses.replace(setup, y=y)
        return cls(x, y, x_trig, setup, options, model_outputs(reference, x, x_trig, setup.explainers, options))

    def metrics(self, model: nn.Module, x: torch.Tensor | None = None, x_trig: torch.Tensor | None = None
                ) -> dict[str, float]:
        """``acc_clean``, ``acc_trig`` (Top-1), ``asr`` (label-changing recipes), ``fsr`` and ``cr`` averaged over
        the run's explainers, of ``model`` on the probe's images (or on ``x``/``x_trig``, e.g. denoised)."""
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


def neural_cleanse_sets(model: nn.Module, x_train: torch.Tensor, images: int, repeats: int, *, epochs: int,
                        steps_per_epoch: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Neural Cleanse (Wang et al., IEEE S&P 2019) on ``repeats`` disjoint sets of ``images`` clean images:
    per set ``model_anomaly_index`` (R,), ``l1_norms``/``anomaly_index``/``flagged`` (R,K); ``masks`` (K,1,H,W) and
    ``patterns`` (K,C,H,W) of the set with the median model anomaly index; ``threshold`` (0-dim)."""
    runs = [neural_cleanse(model, x_train[images * i:images * (i + 1)], epochs=epochs, steps_per_epoch=steps_per_epoch,
                           batch_size=batch_size, seed=seed + i, progress=False) for i in range(repeats)]
    index = torch.tensor([r.model_anomaly_index for r in runs], dtype=torch.float64)
    rep = runs[median_set(index)]
    flagged = torch.zeros(len(runs), len(rep.l1_norms), dtype=torch.bool)
    for i, r in enumerate(runs):
        flagged[i, r.flagged] = True
    return {"masks": rep.masks, "patterns": rep.patterns, "model_anomaly_index": index, "flagged": flagged,
            "l1_norms": torch.stack([r.l1_norms for r in runs]),
            "anomaly_index": torch.stack([r.anomaly_index for r in runs]), "threshold": torch.tensor(rep.threshold)}


def median_set(index: torch.Tensor) -> int:
    """The position of the (lower) median of ``index`` (R,)."""
    return int(index.argsort()[(len(index) - 1) // 2])


def clustering_pairs(model: nn.Module, x: torch.Tensor, x_trig: torch.Tensor, seed: int = 0) -> dict:
    """Fang's Table 2: last-hidden-layer activations of clean ``x`` and triggered ``x_trig`` (N each), PCA to two
    dimensions, one 2-means split, misclustering rate (< 5% separable, > 30% fully overlapping)."""
    n = len(x)
    truth = torch.arange(2 * n) >= n
    one_class = torch.zeros(2 * n, dtype=torch.long)
    res = activation_clustering(head_inputs(model, torch.cat([x, x_trig])), one_class, reduce="pca", n_dims=2,
                                random_state=seed)
    mis = misclustering(res, one_class, truth)
    return {"misclustering": mis.label_agnostic_rate, "verdict": mis.verdict, "pairs": n}


def pruning_sweep(model: nn.Module, probe: Probe, key: str, fractions: Sequence[float], x_rank: torch.Tensor,
                  max_drop: float) -> dict:
    """Fang's Figure 4b: clean accuracy and the attack metric ``key`` (``fsr``/``asr``) of ``model`` with the
    least active last-conv channels pruned at each of ``fractions``."""
    has_metric = key in probe.metrics(model)
    metric = {key: lambda pruned: probe.metrics(pruned)[key]} if has_metric else {}
    curve = pruning_curve(model, probe.x, probe.y, fractions=fractions, metrics=metric, x_rank=x_rank, progress=False)
    return {"fractions": curve.fractions, "accuracy": curve.clean_accuracy, "metric": key,
            "values": curve.metrics.get(key), "layer": curve.layer,
            "fraction_accuracy_kept": curve.fraction_at_accuracy_drop(max_drop)}


def tv_sweep(model: nn.Module, probe: Probe, weights: Sequence[float], n_iter: int) -> dict:
    """Fang's Table 3: the probe's metrics on clean and triggered inputs denoised by TV (Chambolle) at each
    weight (0: undenoised)."""
    rows = []
    for w in weights:
        x = probe.x if w == 0 else tv_chambolle(probe.x, weight=w, n_iter=n_iter)
        x_trig = probe.x_trig if w == 0 else tv_chambolle(probe.x_trig, weight=w, n_iter=n_iter)
        rows.append({"weight": w, **probe.metrics(model, x, x_trig)})
    return {"rows": rows}


def rebn_repair(model: nn.Module, probe: Probe, x_fit: torch.Tensor) -> dict:
    """The probe's metrics before and after re-estimating the BatchNorm statistics on clean ``x_fit``, and the
    statistics' shift per layer (``applicable: False`` for models without BatchNorm)."""
    if not batchnorm_layers(model):
        return {"applicable": False}
    repaired = rebn(model, x_fit)
    shift = statistics_shift(model, repaired)
    return {"applicable": True, "before": probe.metrics(model), "after": probe.metrics(repaired),
            "max_shift": max(shift.values()), "shift": shift}


def detection_aurocs(model: nn.Module, reference: nn.Module, clean: torch.Tensor, triggered: torch.Tensor,
                     x_fit: torch.Tensor, x_threshold: torch.Tensor, strip_blends: int = 32, seed: int = 0) -> dict:
    """AUROC of ``triggered`` vs ``clean`` inputs for each explanation-consistency score (calibrated on clean
    ``x_fit``), combined with and without the trusted ``reference``, for STRIP (Gao et al., ACSAC 2019; blending
    pool ``x_fit``) and Spectral Signatures (Tran et al., NeurIPS 2018); plus the detection rate and false-positive
    rate of the combined score without reference at the 95% quantile of clean ``x_threshold``."""
    det = ExplanationConsistency(model, explainers_for(model), reference=reference, seed=seed).fit(x_fit)
    dc, dt = det.details(clean), det.details(triggered)
    no_ref = [n for n in det.component_names if n != "reference"]
    out = {name: auroc(dc[name], dt[name]) for name in det.component_names}
    elementary = {k: auroc(dc[k], dt[k]) for k in dc if "/" in k}
    best = max(elementary, key=elementary.get)
    threshold = float(torch.quantile(det.combine(det.details(x_threshold), no_ref), 0.95))
    out.update({
        "combined_no_reference": auroc(det.combine(dc, no_ref), det.combine(dt, no_ref)),
        "combined_with_reference": auroc(det.combine(dc), det.combine(dt)),
        "combined_two_sided_no_reference": auroc(det.combine(dc, no_ref, two_sided=True),
                                                 det.combine(dt, no_ref, two_sided=True)),
        "best_elementary": [best, elementary[best]], "elementary": elementary,
        "detection_rate_no_reference": float((det.combine(dt, no_ref) > threshold).float().mean()),
        "fpr_no_reference": float((det.combine(dc, no_ref) > threshold).float().mean())})
    strip = STRIPDetector(model, n=strip_blends, blend="add", seed=seed).fit(x_fit)
    out["strip"] = auroc(strip.score(clean), strip.score(triggered))
    both = torch.cat([clean, triggered])
    scores = spectral_signatures(head_inputs(model, both), predict(model, both).argmax(1)).scores
    out["spectral"] = auroc(scores[:len(clean)], scores[len(clean):])
    return out


def audit_summary(model: nn.Module, data: ImageDataset, suspects: torch.Tensor, out, *, budget: float,
                  checks: Sequence[str], seed: int = 0) -> dict:
    """``xaisec audit`` of ``model`` with clean ``data`` and triggered ``suspects`` (its page written to ``out``):
    the verdict of every check, the model-level ones that say suspicious, its Neural Cleanse numbers and times."""
    report = run_audit(model, data, out=out, budget=budget, checks=checks, suspects=suspects, seed=seed,
                       progress=False)
    found = report["checks"]
    model_level = [c for c in ("neural_cleanse", "fine_pruning", "rebn")
                   if c in found and found[c]["verdict"] == "suspicious"]
    nc = found.get("neural_cleanse", {}).get("evidence", {})
    return {"verdict": report["verdict"], "checks": {k: v["verdict"] for k, v in found.items()},
            "model_level_verdict": "suspicious" if model_level else "no evidence",
            "model_level_suspicious": model_level,
            "neural_cleanse": {k: nc[k] for k in ("model_anomaly_index", "flagged_classes") if k in nc},
            "seconds": report["seconds_per_check"]}
