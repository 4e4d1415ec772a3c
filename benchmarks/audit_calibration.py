"""How often ``xaisec audit`` accuses clean models and catches attacked ones: its verdicts over run directories.

Run: ``python benchmarks/audit_calibration.py RUN_DIR [RUN_DIR ...] --out DIR [--budget 240] [--images 600]``
where each ``RUN_DIR`` is a ``xaisec run`` of a backdoor config (``reference.safetensors`` = the clean model,
``attacked.safetensors`` = the backdoored one, ``config.yaml``). Every model is audited once with suspects: the
first ``--suspects`` test images (outside the attack's target class) with the run's trigger; the audit's clean data
is the rest of the test split. Verdicts *without suspects* are read from the same audit: the model-level checks do
not look at the suspects and the input-level checks only report a clean calibration without them.

For each screening check the table also shows the verdict the check would give alone, without the shift control
(recomputed from the same evidence with the check's own rule), so the control's effect is measured on identical
scores. Writes ``DIR/<run>/<clean|attacked>/audit.json`` (an existing one is reused: the script resumes) and
``DIR/calibration.json``, prints Markdown tables and the machine load. Not a test: it trains nothing but runs full
audits (minutes per model).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Sequence

import torch
import yaml

from xaisec.audit import DEFAULT_CHECKS, run_audit
from xaisec.audit.checks_inputs import FLAG_SHARE
from xaisec.data import ImageDataset, load_dataset
from xaisec.io import load_weights
from xaisec.models import build_model
from xaisec.triggers import build_trigger

MODEL_LEVEL = ("neural_cleanse", "fine_pruning", "rebn")
SCREENING = ("explanation_consistency", "strip", "activation_clustering", "spectral_signatures")


def uncontrolled_verdict(name: str, evidence: dict) -> str:
    """The screening check's verdict from its own rule alone (the rule before the shift control existed)."""
    if name in ("explanation_consistency", "strip"):
        d, fpr = evidence["suspect_detection_rate"], evidence["clean_false_positive_rate"]
        flagged = d >= FLAG_SHARE and d >= 3 * max(fpr, 1e-3)
    elif name == "activation_clustering":
        flagged = evidence["overlap"] == "separable"
    else:
        flagged = evidence["auroc_suspects_vs_clean"] >= 0.8
    return "suspicious" if flagged else "no evidence"


def audit_run(run: Path, out: Path, n_suspects: int, budget: float, images: int,
              checks: Sequence[str] = DEFAULT_CHECKS) -> dict[str, dict]:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    data = load_dataset(cfg["data"]["name"], **cfg["data"].get("options", {}))
    target = cfg.get("attack", {}).get("target_label")
    trigger = build_trigger(cfg["trigger"]["name"], **cfg["trigger"].get("options", {}))
    pool = torch.nonzero(data.y_test != target).flatten() if target is not None else torch.arange(len(data.y_test))
    suspect_idx = pool[:n_suspects]
    keep = torch.ones(len(data.y_test), dtype=torch.bool)
    keep[suspect_idx] = False
    with torch.no_grad():
        suspects = trigger(data.x_test[suspect_idx]).clamp(0, 1)
    clean = ImageDataset(data.name, data.x_train, data.y_train, data.x_test[keep], data.y_test[keep],
                         num_classes=data.num_classes, class_names=data.class_names)
    results = {}
    for kind, weights in (("clean", "reference.safetensors"), ("attacked", "attacked.safetensors")):
        model = build_model(cfg["model"]["arch"], data.input_shape, data.num_classes, **cfg["model"].get("options", {}))
        load_weights(model, run / weights)
        done = out / run.name / kind / "audit.json"
        if done.is_file():  # resume: an audited model is not audited again
            results[kind] = summarise(json.loads(done.read_text()))
            results[kind]["seconds"] = results[kind]["total_seconds"]
            continue
        t0 = time.monotonic()
        report = run_audit(model.eval(), clean, out=out / run.name / kind, budget=budget, suspects=suspects, checks=checks,
                           fit_images=images, eval_images=images, progress=False,
                           meta={"model": str(run / weights), "arch": cfg["model"]["arch"]})
        results[kind] = summarise(report)
        results[kind]["seconds"] = round(time.monotonic() - t0, 1)
    return results


def summarise(report: dict) -> dict:
    checks = report["checks"]
    verdicts = {n: c["verdict"] for n, c in checks.items()}
    alone = {n: uncontrolled_verdict(n, checks[n]["evidence"]) for n in SCREENING if checks[n]["verdict"] != "skipped"}
    model_level = any(verdicts.get(n) == "suspicious" for n in MODEL_LEVEL)
    return {"verdicts": verdicts, "screening_without_control": alone,
            "overall_without_suspects": "suspicious" if model_level else "no evidence",
            "overall_with_suspects": report["verdict"],
            "overall_with_suspects_without_control": "suspicious" if model_level or "suspicious" in alone.values()
            else "no evidence",
            "control_accuracy": checks.get("shift_control", {}).get("evidence", {}).get("control_accuracy"),
            "total_seconds": report["total_seconds"], "numbers": _numbers(checks)}


def _numbers(checks: dict) -> dict:
    out = {}
    for short, name in (("ec", "explanation_consistency"), ("strip", "strip")):
        ev = checks.get(name, {}).get("evidence", {})
        out.update({f"{short}_model": ev.get("suspect_detection_rate"), f"{short}_control": ev.get("control_detection_rate"),
                    f"{short}_share": ev.get("paired_share_over_control")})
    return out


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def rate(rows: list[dict], key) -> str:
    hits = sum(key(r) == "suspicious" for r in rows)
    return f"{hits}/{len(rows)}"


def tables(results: dict[str, dict[str, dict]]) -> str:
    lines = ["| run | model | " + " | ".join(MODEL_LEVEL) + " | " + " | ".join(f"{n} (alone → controlled)" for n in SCREENING)
             + " | overall, no suspects | overall, suspects, no control | overall, suspects, controlled |",
             "|---" * (5 + len(MODEL_LEVEL) + len(SCREENING)) + "|"]
    short = {"suspicious": "S", "no evidence": "–", "skipped": "skip", "inconclusive": "?", "info": "i"}
    for run, kinds in results.items():
        for kind, r in kinds.items():
            v, alone = r["verdicts"], r["screening_without_control"]
            cells = [short[v.get(n, "skipped")] for n in MODEL_LEVEL]
            cells += [f"{short[alone.get(n, 'skipped')]} → {short[v.get(n, 'skipped')]}" for n in SCREENING]
            cells += [short[r["overall_without_suspects"]], short[r["overall_with_suspects_without_control"]],
                      short[r["overall_with_suspects"]]]
            lines.append(f"| {run} | {kind} | " + " | ".join(cells) + " |")
    lines += ["", "| check | false positives (clean models) | detections (attacked models) |", "|---|---|---|"]
    clean = [k["clean"] for k in results.values()]
    attacked = [k["attacked"] for k in results.values()]
    for n in MODEL_LEVEL:
        if all(r["verdicts"].get(n, "skipped") == "skipped" for r in clean + attacked):
            continue
        lines.append(f"| {n} | {rate(clean, lambda r: r['verdicts'].get(n))} | "
                     f"{rate(attacked, lambda r: r['verdicts'].get(n))} |")
    for n in SCREENING:
        for label, key in ((f"{n}, alone", lambda r: r["screening_without_control"].get(n)),
                           (f"{n}, controlled", lambda r: r["verdicts"].get(n))):
            lines.append(f"| {label} | {rate(clean, key)} | {rate(attacked, key)} |")
    for label, field in (("overall, without suspects", "overall_without_suspects"),
                         ("overall, with suspects, no control", "overall_with_suspects_without_control"),
                         ("overall, with suspects, controlled", "overall_with_suspects")):
        lines.append(f"| **{label}** | {rate(clean, lambda r: r[field])} | {rate(attacked, lambda r: r[field])} |")
    lines += ["", "| run | model | control accuracy | EC detected (model / control) | EC paired share | "
              "STRIP detected (model / control) | STRIP paired share |", "|---|---|---|---|---|---|---|"]
    for run, kinds in results.items():
        for kind, r in kinds.items():
            n = r["numbers"]
            lines.append(f"| {run} | {kind} | {_pct(r['control_accuracy'])} | {_pct(n.get('ec_model'))} / "
                         f"{_pct(n.get('ec_control'))} | {_pct(n.get('ec_share'))} | {_pct(n.get('strip_model'))} / "
                         f"{_pct(n.get('strip_control'))} | {_pct(n.get('strip_share'))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of backdoor experiments")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--suspects", type=int, default=200, help="triggered test images per model (default 200)")
    parser.add_argument("--budget", type=float, default=240, help="audit time budget per model (s)")
    parser.add_argument("--images", type=int, default=600, help="clean fit / evaluation images of each audit")
    parser.add_argument("--checks", default=",".join(DEFAULT_CHECKS),
                        help="comma-separated checks, in order (default: all); model-level checks left out are "
                             "shown as skipped and count as not suspicious in the 'without suspects' verdict")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for run in args.runs:
        results[run.name] = audit_run(run, args.out, args.suspects, args.budget, args.images,
                                      [c.strip() for c in args.checks.split(",") if c.strip()])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "calibration.json").write_text(json.dumps(results, indent=1))
    print(tables(results))
    print(f"\nload average {os.getloadavg()[0]:.2f} (1 min), threads {args.threads}; per-model audit seconds: "
          + ", ".join(f"{run}/{k} {r['seconds']}" for run, kinds in results.items() for k, r in kinds.items()))


if __name__ == "__main__":
    main()
