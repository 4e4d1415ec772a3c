"""``report.html`` of a backdoor run, rebuilt from the run directory's artifacts alone (no model, no data).

Reads ``config.yaml``, ``metrics.json``, ``log.jsonl``, ``environment.json``, ``status.json`` and
``evaluation.safetensors``; draws the figures into ``figures/`` and writes one self-contained HTML file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
import yaml

from ..errors import DataError
from ..io import atomic_write_text
from ..report import html as H
from ..report.panels import image_rows, map_grid, training_curves
from ..runs.rundir import RunDir

RATES = ("top1_clean", "top5_clean", "top1_trig", "top5_trig", "asr", "top1_drop", "fsr", "cr", "fsr@paper",
         "cr@paper", "iou_ref_clean", "iou_ref_trig", "trigger_mass_trig", "trigger_hit_trig")
ARROWS = {"higher": "↑ higher", "lower": "↓ lower", "none": "–"}


def _fmt(key: str, m: dict | None) -> str:
    if m is None or m.get("value") is None:
        return "–"
    leaf = key.rsplit("/", 1)[-1]
    if leaf in RATES:
        text = f"{100 * m['value']:.1f}%"
        return text + (f" ± {100 * m['std']:.1f}" if m.get("std") is not None else "")
    return f"{m['value']:.4f}" + (f" ± {m['std']:.4f}" if m.get("std") is not None else "")


def _load(rd: RunDir) -> tuple[dict, dict, list[dict], dict, str]:
    """``(config, metrics document, history, environment, state)`` from the run directory alone."""
    from ..runs.runner import read_metrics

    records, context = read_metrics(rd.path)
    metrics = {**context, "metrics": {k: m.as_dict() for k, m in records.items()}}
    log_path = rd / "log.jsonl"
    history = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()] if log_path.is_file() else []
    env = rd.read_json("environment.json") if (rd / "environment.json").is_file() else {}
    return rd.read_config(), metrics, history, env, rd.state()


def _samples(rd: RunDir) -> dict:
    from ..runs.backdoor import Evaluation

    path = rd / "evaluation.safetensors"
    if not path.is_file():
        raise DataError(f"{rd.path} has no evaluation.safetensors; finish the run with `xaisec run --resume {rd.path}`")
    return Evaluation.load(path).samples


def draw_figures(rd: RunDir, metrics: dict, history: list[dict]) -> dict[str, Path]:
    """The report's PNGs from the sample tensors and the log."""
    s, names = _samples(rd), metrics.get("class_names") or []
    label = lambda i: names[i] if i < len(names) else str(i)  # noqa: E731
    y = [true_label(v, label) for v in s["y"]]
    figs: dict[str, Path] = {}
    mask = s["trigger_mask"].bool()
    if mask.all():  # a whole-image trigger (filter, Moire): show what it changes instead of a blank region
        diff = (s["x_trig"] - s["x"]).abs()
        third = ("|triggered − clean|", diff / diff.flatten(1).amax(1).clamp_min(1e-8)[:, None, None, None])
    else:
        third = ("trigger region", mask.float()[0:1].expand(1, s["x"].shape[1], -1, -1))
    figs["triggers"] = image_rows([("clean", s["x"]), ("triggered", s["x_trig"]), third],
                                  rd.figures / "triggers.png", [f"y={v}" for v in y])
    multilabel = bool(metrics.get("multilabel"))

    def predictions(model: str, i: int) -> str:  # clean/triggered; a finding name once when both agree
        clean, trig = label(int(s[f"pred/{model}/clean"][i])), label(int(s[f"pred/{model}/trig"][i]))
        return clean if multilabel and clean == trig else f"{clean}/{trig}"

    rows = [f"y={y[i]}\nref {predictions('reference', i)}\natt {predictions('attacked', i)}" for i in range(len(y))]
    predicted = "top-scoring finding" if multilabel else "prediction"
    explained = f", maps of {metrics.get('explained')}" if multilabel else ""
    for name in metrics["explainers"]:
        cols = [("clean input", s["x"], None),
                ("reference: clean", s["x"], s[f"maps/reference/{name}/clean"]),
                ("attacked: clean", s["x"], s[f"maps/attacked/{name}/clean"]),
                ("triggered input", s["x_trig"], None),
                ("reference: triggered", s["x_trig"], s[f"maps/reference/{name}/trig"]),
                ("attacked: triggered", s["x_trig"], s[f"maps/attacked/{name}/trig"])]
        if f"target/{name}" in s:
            what = "top-k to suppress" if metrics.get("attack_type") == "non-targeted" else "attacker's target"
            cols.append((what, s["x_trig"], s[f"target/{name}"]))
        figs[name] = map_grid(cols, rd.figures / f"maps_{name}.png", rows,
                              f"{name}: reference vs attacked model{explained} (rows: true label; {predicted} "
                              "clean/triggered)")
    curves = training_curves(history, rd.figures / "training.png")
    if curves is not None:
        figs["training"] = curves
    return figs


def true_label(y: torch.Tensor, label: Callable[[int], str]) -> str:
    """A sample's true label in words, short enough for a figure's row label: its class, or on multi-label data
    its first finding and how many more (``Effusion+2``; ``none`` for ChestX-ray14's "No Finding")."""
    if y.dim() == 0:
        return label(int(y))
    present = [label(int(k)) for k in torch.nonzero(y > 0.5).flatten()]
    if not present:
        return "none"
    return present[0] + (f"+{len(present) - 1}" if len(present) > 1 else "")


def _metric_rows(metrics: dict) -> list[list[str]]:
    m = metrics["metrics"]
    keys = sorted({k.split("/", 1)[1] for k in m if k.startswith(("reference/", "attacked/"))},
                  key=lambda k: (k.count("/"), k))
    rows = []
    for key in keys:
        ref, att = m.get(f"reference/{key}"), m.get(f"attacked/{key}")
        info = att or ref
        rows.append([key.replace("/", " · "), _fmt(key, ref), _fmt(key, att), ARROWS.get(info["direction"], "–"),
                     info["description"]])
    return rows


def _headline_items(m: dict) -> list[tuple[str, str, str]]:
    """``(label, value as text, what it means)`` of the attacked model's headline numbers: rates in percent,
    AUROC (multi-label data; Fang & Choromanska's X-ray figure) as a fraction."""
    items = []
    if "attacked/top1_drop" in m:
        items.append(("clean Top-1 drop", m["attacked/top1_drop"]["value"], "reference minus attacked, clean inputs"))
    for key, label, what in (("attacked/auroc_clean", "mean AUROC clean", "over the findings, clean inputs"),
                             ("attacked/auroc_trig", "mean AUROC triggered", "over the findings, triggered inputs"),
                             ("attacked/auroc_drop", "clean AUROC drop", "reference minus attacked, clean inputs")):
        if key in m:
            items.append((label, m[key]["value"], what, "fraction"))
    if "attacked/asr" in m:
        items.append(("ASR", m["attacked/asr"]["value"], "triggered inputs classified as the target label"))
    for key in sorted(k for k in m if k.startswith("attacked/") and k.endswith(("/fsr", "/cr"))):
        name, what = key.split("/")[1], key.rsplit("/", 1)[1]
        description = m[key]["description"]
        items.append((f"{name} {what.upper()}", m[key]["value"], description.split(": ", 1)[-1]))
    return [(item[0], f"{item[1]:.3f}" if len(item) > 3 else f"{100 * item[1]:.1f}%", item[2])
            for item in items if item[1] is not None]


def headline(records: dict) -> list[str]:
    """The lines ``xaisec run`` prints at the end of a backdoor run."""
    m = {k: r.as_dict() for k, r in records.items()}
    return [f"{label}: {text}  ({what})" for label, text, what in _headline_items(m)]


def _badges(metrics: dict) -> list[str]:
    """The attacked model's headline numbers, each with its definition (thresholds included) on hover and below."""
    return [H.badge(f"{label} {text}", "info") for label, text, _ in _headline_items(metrics["metrics"])]


def build_report(run_dir: str | Path, state: str | None = None) -> Path:
    """Draw the figures and write ``report.html`` in ``run_dir``; ``state`` overrides the status shown."""
    rd = RunDir(run_dir)
    cfg, metrics, history, env, stored_state = _load(rd)
    figs = draw_figures(rd, metrics, history)
    state = state or stored_state
    att = cfg.get("attack", {})
    subtitle = (f"{metrics['recipe']} ({metrics['paper']}) · {metrics.get('dataset', '')} · {metrics.get('arch', '')} · "
                f"trigger: {metrics.get('trigger', '')}")
    summary = [H.badge(f"run {state}", "ok" if state in ("finished", "running") else "warn"), " ", *_badges(metrics)]
    definitions = "; ".join(f"{label}: {what}" for label, _, what in _headline_items(metrics["metrics"]))
    thresholds = [[n, f"{t['value']:g}", "–" if t["paper"] is None else f"{t['paper']:g}"]
                  for n, t in metrics["thresholds"].items()]
    body = [
        "<p>" + " ".join(summary) + "</p>",
        H.paragraph(definitions, "note"),
        H.paragraph(f"Attack: {metrics['summary']}." if metrics.get("summary") else ""),
        H.paragraph(f"Explainers: {', '.join(metrics['explainers'])}; target label: "
                    f"{'none (labels kept)' if metrics.get('target_label') is None else metrics['target_label']}; "
                    f"attack epochs: {metrics.get('attack_epochs')} (stopped by: {metrics.get('stop_reason')}"
                    f"{', rule ' + metrics['stopping_rule'] if metrics.get('stopping_rule') else ''}). "
                    f"Maps for the metrics: {metrics['map_postprocess']}; every evaluation uses the ReLU model on the "
                    f"held-out split and explains {metrics.get('explained', 'the predicted class')}.", "note"),
        H.section("Metrics", H.paragraph("'better' is from the attacker's point of view: 'higher'/'lower' is "
                                         "better, '–' is informative only.", "note"),
                  H.table(["metric", "reference model", "attacked model", "better", "what"], _metric_rows(metrics),
                          numeric=(1, 2), nowrap=(0, 3))),
        H.section("Inputs", H.image(figs["triggers"], "Clean test images, their triggered versions and the "
                                                      "trigger's region (where a map pointing at the trigger would "
                                                      "be); for a trigger that covers the whole image, what it changes "
                                                      "(|triggered − clean|, scaled per image).")),
    ]
    for name in metrics["explainers"]:
        body.append(H.section(f"Explanations: {name}", H.image(
            figs[name], f"{name} maps of the reference and the attacked model on clean and triggered inputs "
                        "(each map min-max scaled, jet colour map).")))
    if "training" in figs:
        body.append(H.section("Training", H.image(figs["training"], "Loss parts per epoch and the quality monitored "
                                                                     "on a fixed slice of the training images.")))
    body.append(H.section("FSR thresholds", H.table(["explainer", "used", "paper (Fang & Choromanska, Table 1)"],
                                                    thresholds, numeric=(1, 2))))
    body.append(H.section("Configuration", H.pre(yaml.safe_dump(cfg, sort_keys=False))))
    body.append(H.section("Environment", H.pre(json.dumps(env, indent=2))))
    title = f"Explanation-aware backdoor: {att.get('recipe', metrics['recipe'])}"
    path = rd / "report.html"
    atomic_write_text(path, H.page(title, subtitle, body))
    return path
