"""``report.html`` of a ``fang_defenses`` run, rebuilt from the run directory alone (stage artifacts, metrics.json,
config.yaml): Figure 4a (Neural Cleanse anomaly index per model) and Figure 4b (fine-pruning curves) of Fang &
Choromanska ("Backdoor Attacks on the DNN Interpretation System", AAAI 2022) redrawn, the tables, the caveats, the
reverse-engineered triggers. Also writes ``results.json`` (every model's results) and ``tables.md``.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from ..report import html as H  # noqa: E402
from ..report.figures import save_figure  # noqa: E402
from ..runs.rundir import RunDir  # noqa: E402
from .tables import build_tables, is_reference, label_text, reference_of  # noqa: E402


def figure_4a(results: dict[str, dict], path: Path) -> Path | None:
    """Bar chart of the Neural Cleanse anomaly index per model, with the detection threshold."""
    names = [n for n, r in results.items() if "neural_cleanse" in r]
    if not names:
        return None
    vals = [results[n]["neural_cleanse"]["model_anomaly_index"] for n in names]
    threshold = results[names[0]]["neural_cleanse"]["threshold"]
    fig, ax = plt.subplots(figsize=(0.7 * len(names) + 2, 3))
    ax.bar(range(len(names)), vals, color=["seagreen" if is_reference(results[n]) else "steelblue" for n in names])
    ax.axhline(threshold, color="crimson", ls="--", lw=1, label=f"detection threshold (index {threshold:g})")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([label_text(n, results[n]) for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("Neural Cleanse anomaly index")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def figure_4b(results: dict[str, dict], path: Path) -> Path | None:
    """Clean accuracy (attacked and clean reference) and attack metric against the pruned fraction, per model."""
    attacked = [n for n, r in results.items() if not is_reference(r) and "fine_pruning" in r]
    if not attacked:
        return None
    cols = min(4, len(attacked))
    rows = -(-len(attacked) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, attacked):
        fp, ref = results[name]["fine_pruning"], reference_of(results, name)["fine_pruning"]
        ax.plot(ref["fractions"], ref["accuracy"], color="seagreen", label="accuracy (no attack)")
        ax.plot(fp["fractions"], fp["accuracy"], color="steelblue", label="accuracy (attacked)")
        if fp["values"]:
            ax.plot(fp["fractions"], fp["values"], color="crimson", label="ASR / FSR (attacked)")
        ax.set_title(f"{name} ({fp['metric'].upper()})", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(attacked):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.supxlabel("pruned fraction of last-conv channels", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def trigger_figures(results: dict[str, dict], triggers: dict, figures: Path) -> dict[str, Path]:
    """The reverse-engineered trigger of every class (Neural Cleanse), one PNG per model."""
    from ..audit.figures import triggers_figure

    out = {}
    for label, t in triggers.items():
        nc, names = results[label]["neural_cleanse"], results[label]["class_names"]
        png = triggers_figure(t["masks"], t["patterns"], nc["l1_norms"], nc["anomaly_index"],
                              list(range(len(nc["l1_norms"]))), names, nc["flagged_classes"])
        out[label] = atomic_write_bytes(figures / f"nc_triggers_{label}.png", base64.b64decode(png))
    return out


def _models_table(models: list[dict]) -> str:
    rows = [[m["label"], m["role"], m["recipe"] or "–", m["arch"], m["trigger"], m["attack_metric"].upper(), m["run"]]
            for m in models]
    return H.table(["model", "role", "recipe", "architecture", "trigger", "attack metric", "backdoor run"], rows)


def build_report(run_dir: str | Path) -> Path:
    """Write ``results.json``, ``tables.md``, the figures and ``report.html`` into ``run_dir``; returns the page."""
    from ..runs.defenses import collect_results, load_artifacts
    from ..runs.runner import read_metrics

    rd = RunDir(run_dir)
    artifacts = load_artifacts(rd.path)
    results, models = collect_results(artifacts)
    cfg = rd.read_config()
    _, context = read_metrics(rd.path)
    tables = build_tables(results, cfg)
    atomic_write_json(rd / "results.json", results)
    atomic_write_text(rd / "tables.md", "\n".join(t.markdown() for t in tables))
    fig4a = figure_4a(results, rd.figures / "fig4a_neural_cleanse.png")
    fig4b = figure_4b(results, rd.figures / "fig4b_fine_pruning.png")
    triggers = trigger_figures(results, artifacts["neural_cleanse"].triggers, rd.figures) \
        if "neural_cleanse" in artifacts else {}
    body = [H.paragraph(f"Every model measured on the first {cfg['n_eval']} held-out test images of its backdoor run, "
                        "with that run's trigger. Attack metric: ASR for label-changing recipes that keep the maps, "
                        "FSR (share of triggered maps fooled) otherwise; rates in percent."),
            H.section("Caveats", *(H.paragraph(c) for c in context.get("caveats", []))),
            H.section("Models", _models_table(models))]
    if fig4a is not None:
        body.append(H.section("Neural Cleanse (Figure 4a)", H.image(
            fig4a, "MAD anomaly index of the reverse-engineered triggers per model (green: clean reference); a "
                   "model is flagged above the dashed line (Wang et al., IEEE S&P 2019).")))
    if fig4b is not None:
        body.append(H.section("Fine-pruning (Figure 4b)", H.image(
            fig4b, "Clean accuracy of the attacked and the clean reference model, and the attack metric of the "
                   "attacked model, against the pruned fraction of the last conv block's channels (least active on "
                   "clean data first; Liu et al., RAID 2018).")))
    for t in tables:
        body.append(H.section(t.title, H.table(t.headers, t.rows)))
    if triggers:
        body.append(H.section("Reverse-engineered triggers (Neural Cleanse)", *(
            H.image(p, f"{label_text(label, results[label])}: mask and mask x pattern per class, flagged classes in "
                       "red") for label, p in triggers.items())))
    if "audit" in artifacts:
        body.append(H.paragraph("Each model's full audit report: audits/<model>/report.html in this run directory.",
                                "note"))
    body.append(H.section("Configuration", H.pre(yaml.safe_dump(cfg, sort_keys=False))))
    env = rd.read_json("environment.json") if (rd / "environment.json").is_file() else {}
    body.append(H.section("Environment", H.pre(json.dumps(env, indent=2))))
    subtitle = f"{context.get('paper', '')} · {len(models)} models from {len(cfg['runs'])} backdoor run(s)"
    path = rd / "report.html"
    atomic_write_text(path, H.page("Classical backdoor defenses against explanation-aware backdoors", subtitle, body))
    return path
