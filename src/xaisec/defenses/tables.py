"""The numbers of a ``fang_defenses`` run: flat metric records, the caveats, and the tables in the shapes of Fang &
Choromanska ("Backdoor Attacks on the DNN Interpretation System", AAAI 2022: Table 2, Table 3, Figure 4's numbers).

Everything here works on plain data: ``results`` maps a model label to its info (role, arch, recipe, trigger...),
its undefended ``metrics`` and one entry per measurement family that ran (see :mod:`xaisec.runs.defenses`);
``cfg`` is the run's config as a mapping. Rates are in [0,1]; tables print them in percent.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from ..records import Metric

SYMBOL = {"separable": "○ separable", "partially overlapping": "◐ partial", "fully overlapping": "● full"}
DETECTION_SCORES = {"disagreement": "interpreter disagreement (explanation consistency)",
                    "instability": "map instability under small transformations (explanation consistency)",
                    "reference": "distance to the trusted reference model's maps (explanation consistency)",
                    "combined_no_reference": "explanation consistency, combined without the reference model",
                    "combined_with_reference": "explanation consistency, combined with the reference model",
                    "combined_two_sided_no_reference": "explanation consistency, two-sided, without the reference",
                    "strip": "STRIP (Gao et al., ACSAC 2019)",
                    "spectral": "Spectral Signatures (Tran et al., NeurIPS 2018)"}


@dataclass
class Table:
    """A titled table of already formatted cells."""

    title: str
    headers: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |",
                 "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def is_reference(r: dict) -> bool:
    return r.get("role") == "reference"


def label_text(label: str, r: dict) -> str:
    """``no attack (<arch>)`` for the clean reference models, the run's name otherwise."""
    return f"no attack ({label.removeprefix('reference_')})" if is_reference(r) else label


def reference_of(results: dict[str, dict], label: str) -> dict:
    """The clean reference result of the same architecture and dataset as ``label``."""
    r = results[label]
    return next(x for x in results.values() if is_reference(x) and x["arch"] == r["arch"]
                and x["dataset"] == r["dataset"])


def attack_value(r: dict, metrics: dict | None = None) -> float | None:
    """The model's attack metric (FSR or ASR, see ``attack_metric``) in ``metrics`` (default: undefended)."""
    return (r["metrics"] if metrics is None else metrics).get(r["attack_metric"])


def pruning_kept(fp: dict) -> tuple[float, float | None]:
    """``(fraction, attack metric)`` at the largest pruned fraction keeping clean accuracy (Fang, Figure 4b)."""
    f = fp["fraction_accuracy_kept"]
    values = fp["values"]
    return f, None if not values else values[fp["fractions"].index(f)]


def tv_choice(results: dict[str, dict], label: str, max_drop: float) -> dict:
    """The TV sweep row of the strongest weight whose clean accuracy stays within ``max_drop`` of the clean
    reference model of the same architecture (Fang, Table 3)."""
    rows = results[label]["tv_denoising"]["rows"]
    ref_acc = reference_of(results, label)["metrics"]["acc_clean"]
    ok = [row for row in rows if row["acc_clean"] >= ref_acc - max_drop] or rows[:1]
    return ok[-1]


def metric_records(results: dict[str, dict], cfg: dict) -> dict[str, Metric]:
    """Flat records ``<label>/<measurement>/<name>``; directions from the attacker's point of view (a lower anomaly
    index or detection AUROC is better for the attacker)."""
    out: dict[str, Metric] = {}
    for label, r in results.items():
        key, name = r["attack_metric"], r["attack_metric"].upper()
        out[f"{label}/clean_accuracy"] = Metric(r["metrics"]["acc_clean"], "higher",
                                                "Top-1 on the clean evaluation images")
        out[f"{label}/{key}"] = Metric(attack_value(r), "higher", f"{name} on the evaluation images, no defense")
        if "neural_cleanse" in r:
            nc = r["neural_cleanse"]
            reps = [v for v, _ in nc["repeats"]]
            std = statistics.pstdev(reps) if len(reps) > 1 else None
            out[f"{label}/neural_cleanse/anomaly_index"] = Metric(
                nc["model_anomaly_index"], "lower", f"Neural Cleanse MAD anomaly index, median of {len(reps)} "
                f"set(s) of clean images (flagged above {nc['threshold']:g}; Fang, Figure 4a)", std)
            out[f"{label}/neural_cleanse/flagged_classes"] = Metric(
                len(nc["flagged_classes"]), "lower", "classes Neural Cleanse flags (median set)")
        if "activation_clustering" in r:
            out[f"{label}/activation_clustering/misclustering"] = Metric(
                r["activation_clustering"]["misclustering"], "higher", "Activation Clustering misclustering rate of "
                "clean vs triggered pairs (< 5% separable, > 30% fully overlapping; Fang, Table 2)")
        if "fine_pruning" in r and r["fine_pruning"]["values"]:
            f, v = pruning_kept(r["fine_pruning"])
            out[f"{label}/fine_pruning/{key}"] = Metric(v, "higher", f"{name} after pruning the largest fraction of "
                                                                     "last-conv channels that keeps clean accuracy")
            out[f"{label}/fine_pruning/fraction"] = Metric(f, "none", "that pruned fraction")
        if "tv_denoising" in r:
            row = tv_choice(results, label, cfg["tv_denoising"]["max_accuracy_drop"])
            out[f"{label}/tv_denoising/{key}"] = Metric(
                attack_value(r, row), "higher",
                f"{name} on TV-denoised inputs at the strongest weight keeping clean accuracy (Fang, Table 3)")
            out[f"{label}/tv_denoising/weight"] = Metric(row["weight"], "none", "that TV (Chambolle) weight")
        if r.get("rebn", {}).get("applicable"):
            out[f"{label}/rebn/max_shift"] = Metric(r["rebn"]["max_shift"], "lower", "largest BatchNorm statistics "
                                                    "shift against clean data, in clean standard deviations")
            out[f"{label}/rebn/{key}"] = Metric(attack_value(r, r["rebn"]["after"]), "higher",
                                                f"{name} after re-estimating the BatchNorm statistics")
        for score, what in DETECTION_SCORES.items():
            if score in r.get("input_detection", {}):
                out[f"{label}/input_detection/{score}_auroc"] = Metric(
                    r["input_detection"][score], "lower", f"AUROC triggered vs clean inputs: {what}")
        if "audit" in r:
            a = r["audit"]
            out[f"{label}/audit/suspicious"] = Metric(float(a["verdict"] == "suspicious"), "lower",
                                                      "xaisec audit with triggered suspects says suspicious (1) or not")
            out[f"{label}/audit/suspicious_checks"] = Metric(sum(v == "suspicious" for v in a["checks"].values()),
                                                             "lower", "audit checks that say suspicious")
    return out


def caveats(models: list[dict], measured: list[str], audit_checks: list[str] | None) -> list[str]:
    """What a reader must keep in mind, from what this run measured (``audit_checks``: None for all)."""
    out = []
    global_trigger = sorted({m["arch"] for m in models if m["global_trigger"]})
    if global_trigger and set(measured) & {"activation_clustering", "input_detection", "audit"}:
        out.append(f"Models on {', '.join(global_trigger)} were measured with a global trigger (it changes the whole "
                   "image, e.g. the Moiré overlay): input-level checks (Activation Clustering, STRIP, explanation "
                   "consistency, the audit's suspect checks) then separate triggered from clean inputs on the clean "
                   "reference model too. They detect the altered inputs, not the backdoor: compare every such row "
                   "with its 'no attack' row.")
    if "rebn" in measured:
        out.append("The Re-BN statistics shift comes from fine-tuning with BatchNorm in eval mode (as the recipes "
                   "do); an attacker who re-estimates the statistics after the attack removes it.")
    audit_nc = "neural_cleanse" in (audit_checks or ["neural_cleanse"])
    if "neural_cleanse" in measured and "audit" in measured and audit_nc:
        out.append("The audit runs its own Neural Cleanse on other clean images; its anomaly index differs from the "
                   "Neural Cleanse table's within Neural Cleanse's spread from one set of images to another.")
    out.append("Each clean reference model is measured with the data and trigger of the first run of its "
               "architecture and dataset.")
    return out


def report_context(models: list[dict], cfg: dict) -> dict[str, Any]:
    return {"models": models, "measured": list(cfg["measure"]), "n_eval": cfg["n_eval"],
            "caveats": caveats(models, cfg["measure"], cfg["audit"]["checks"]),
            "paper": "Fang & Choromanska, Backdoor Attacks on the DNN Interpretation System, AAAI 2022"}


def headline(metrics: dict[str, Metric]) -> list[str]:
    """One line per model: Neural Cleanse index, Activation Clustering, Re-BN shift and audit verdict."""
    labels = dict.fromkeys(k.split("/", 1)[0] for k in metrics)
    parts = (("neural_cleanse/anomaly_index", lambda v: f"NC index {v:.2f}"),
             ("activation_clustering/misclustering", lambda v: f"AC misclustering {100 * v:.1f}%"),
             ("rebn/max_shift", lambda v: f"Re-BN shift {v:.3f}"),
             ("audit/suspicious", lambda v: "audit: suspicious" if v else "audit: no evidence"))
    out = []
    for label in labels:
        items = [fmt(metrics[f"{label}/{k}"].value) for k, fmt in parts
                 if f"{label}/{k}" in metrics and metrics[f"{label}/{k}"].value is not None]
        if items:
            out.append(f"{label}: " + "; ".join(items))
    return out


def build_tables(results: dict[str, dict], cfg: dict) -> list[Table]:
    """The tables of the report (only for the measurements that ran)."""
    rows = results.items()
    with_nc = any("neural_cleanse" in r for r in results.values())
    tables = [Table("Neural Cleanse (Figure 4a) and model-level checks" if with_nc else "Model-level checks",
                    ["model", "clean acc", "attack metric", "NC anomaly index", "NC flagged", "Re-BN max shift",
                     "model-level audit verdict", "suspicious model-level checks"],
                    [[label_text(n, r), pct(r["metrics"]["acc_clean"]),
                      f"{r['attack_metric'].upper()} {pct(attack_value(r))}",
                      f"{r['neural_cleanse']['model_anomaly_index']:.2f}" if "neural_cleanse" in r else "–",
                      str(r["neural_cleanse"]["flagged_classes"]) if "neural_cleanse" in r else "–",
                      f"{r['rebn']['max_shift']:.3f}" if r.get("rebn", {}).get("applicable") else "–",
                      r["audit"]["model_level_verdict"] if "audit" in r else "–",
                      ", ".join(r["audit"]["model_level_suspicious"]) or "–" if "audit" in r else "–"]
                     for n, r in rows])]
    if cfg["neural_cleanse"]["repeats"] > 1 and any("neural_cleanse" in r for r in results.values()):
        tables.append(Table(f"Neural Cleanse stability: anomaly index on disjoint sets of "
                            f"{cfg['neural_cleanse']['images']} clean training images",
                            ["model", "anomaly index per set", "flagged classes per set"],
                            [[label_text(n, r), ", ".join(f"{v:.2f}" for v, _ in r["neural_cleanse"]["repeats"]),
                              "; ".join(str(f) for _, f in r["neural_cleanse"]["repeats"])]
                             for n, r in rows if "neural_cleanse" in r]))
    if any("activation_clustering" in r for r in results.values()):
        tables.append(Table(f"Activation Clustering (Table 2): {cfg['activation_clustering']['pairs']} clean + "
                            "triggered test pairs, PCA-2, 2-means", ["model", "misclustering rate", "verdict"],
                            [[label_text(n, r), f"{pct(r['activation_clustering']['misclustering'])}%",
                              SYMBOL.get(r["activation_clustering"]["verdict"], r["activation_clustering"]["verdict"])]
                             for n, r in rows if "activation_clustering" in r]))
    if any("fine_pruning" in r for r in results.values()):
        drop = cfg["fine_pruning"]["max_accuracy_drop"]
        tables.append(Table(f"Fine-pruning (Figure 4b): attack metric at the largest pruned fraction that keeps clean "
                            f"accuracy within {100 * drop:g} points",
                            ["model", "metric", "unpruned", "at that fraction", "fraction"],
                            [[label_text(n, r), r["fine_pruning"]["metric"].upper(),
                              pct(r["fine_pruning"]["values"][0]), pct(pruning_kept(r["fine_pruning"])[1]),
                              f"{pruning_kept(r['fine_pruning'])[0]:.2f}"]
                             for n, r in rows if r.get("fine_pruning", {}).get("values")]))
    if any("tv_denoising" in r for r in results.values()):
        drop = cfg["tv_denoising"]["max_accuracy_drop"]
        body = []
        for n, r in rows:
            if "tv_denoising" not in r:
                continue
            row, base = tv_choice(results, n, drop), r["tv_denoising"]["rows"][0]
            body.append([label_text(n, r), f"{row['weight']:g}", pct(row.get("cr")), pct(row.get("fsr")),
                         pct(row.get("asr")), pct(row["acc_clean"]), pct(row["acc_trig"]),
                         pct(base.get("fsr", base.get("asr")))])
        tables.append(Table(f"TV denoising (Table 3): strongest Chambolle weight keeping clean accuracy within "
                            f"{100 * drop:g} points of the clean reference model of the same architecture",
                            ["model", "TV weight", "CR", "FSR", "ASR", "acc clean images", "acc poisoned images",
                             f"FSR/ASR at weight {cfg['tv_denoising']['weights'][0]:g}"], body))
    if any(r.get("rebn", {}).get("applicable") for r in results.values()):
        def arrow(b: dict, a: dict, k: str) -> str:
            return "–" if k not in b else f"{pct(b[k])} -> {pct(a[k])}"

        tables.append(Table(f"Re-BN: before -> after re-estimating BatchNorm statistics on {cfg['rebn']['images']} "
                            "clean training images", ["model", "acc clean", "FSR", "ASR", "max statistics shift"],
                            [[label_text(n, r),
                              *(arrow(r["rebn"]["before"], r["rebn"]["after"], k) for k in ("acc_clean", "fsr", "asr")),
                              f"{r['rebn']['max_shift']:.3f}"]
                             for n, r in rows if r.get("rebn", {}).get("applicable")]))
    if any("input_detection" in r for r in results.values()):
        half = cfg["n_eval"] // 2
        names = ["disagreement", "instability", "reference", "combined_no_reference",
                 "combined_two_sided_no_reference", "combined_with_reference"]
        body = []
        for n, r in rows:
            d = r.get("input_detection")
            if d is None:
                continue
            best = d["best_elementary"]
            body.append([label_text(n, r)] + [f"{d[k]:.3f}" if k in d else "–" for k in names]
                        + [f"{best[1]:.3f} ({best[0]})", f"{d['strip']:.3f}", f"{d['spectral']:.3f}"])
        tables.append(Table(f"Input-level detection: AUROC of {half} triggered vs {half} clean test inputs",
                            ["model", "disagreement", "instability", "reference", "combined (no ref.)",
                             "two-sided (no ref.)", "combined (+ref.)", "best single score", "STRIP", "Spectral Sig."],
                            body))
    audited = [(n, r) for n, r in rows if "audit" in r]
    if audited:
        checks = list(audited[0][1]["audit"]["checks"])
        tables.append(Table(f"xaisec audit with {cfg['audit']['suspects']} triggered test inputs as suspects",
                            ["model", "verdict", *checks],
                            [[label_text(n, r), r["audit"]["verdict"],
                              *(r["audit"]["checks"].get(c, "–") for c in checks)]
                             for n, r in audited]))
    return tables
