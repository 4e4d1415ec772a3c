"""Tables (Markdown) and figures (PNG) of docs/results_defenses.md from ``defense_results.py``'s results.json.

Run: ``python benchmarks/defense_tables.py docs/defense_results/results.json`` (defense_results.py calls it).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SYMBOL = {"separable": "○ separable", "partially overlapping": "◐ partial", "fully overlapping": "● full"}
ACC_FLOOR_DROP = 0.05  # TV denoising: strongest weight whose clean accuracy stays within 5 points


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def is_reference(name: str) -> bool:
    """Clean reference models are stored as ``reference/<arch>`` (one per architecture; older files: ``reference``)."""
    return name == "reference" or name.startswith("reference/")


def label(name: str) -> str:
    if not is_reference(name):
        return name
    arch = name.partition("/")[2]
    return f"no attack ({arch})" if arch else "no attack"


def reference_of(results: dict, name: str) -> dict:
    """The clean reference result of the same architecture as ``name``."""
    arch = results[name].get("arch")
    return results.get(f"reference/{arch}") or next(r for n, r in results.items() if is_reference(n))


def _metric(res: dict) -> tuple[str, float | None]:
    m = res["metrics"]
    return ("FSR", m["fsr"]) if "fsr" in m else (("ASR", m["asr"]) if "asr" in m else ("–", None))


def fig4a(results: dict, out: Path) -> None:
    names = list(results)
    vals = [results[n]["neural_cleanse"]["model_anomaly_index"] for n in names]
    fig, ax = plt.subplots(figsize=(0.7 * len(names) + 2, 3))
    ax.bar(range(len(names)), vals, color=["seagreen" if is_reference(n) else "steelblue" for n in names])
    ax.axhline(2, color="crimson", ls="--", lw=1, label="detection threshold (index 2)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([label(n) for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("Neural Cleanse anomaly index")
    ax.legend(fontsize=8)
    fig.savefig(out / "fig4a_neural_cleanse.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def fig4b(results: dict, out: Path) -> None:
    attacked = [n for n in results if not is_reference(n)]
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
    fig.savefig(out / "fig4b_fine_pruning.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def tables(results: dict) -> str:
    lines = ["### Neural Cleanse (Figure 4a) and model-level checks", "",
             "| model | clean acc | attack metric | NC anomaly index | NC flagged | Re-BN max shift | model-level audit verdict | suspicious model-level checks |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        key, val = _metric(r)
        sus = r["audit"]["model_level_suspicious"]
        lines.append(f"| {label(name)} | {_pct(r['metrics']['acc_clean'])} | "
                     f"{key} {_pct(val)} | {r['neural_cleanse']['model_anomaly_index']:.2f} | "
                     f"{r['neural_cleanse']['flagged_classes']} | {r['rebn']['max_shift']:.3f} | "
                     f"{r['audit']['model_level_verdict']} | {', '.join(sus) or '–'} |")
    stab = {n: r["nc_repeats"] for n, r in results.items() if r.get("nc_repeats")}
    if stab:
        lines += ["", "### Neural Cleanse stability: anomaly index on disjoint sets of 300 clean training images", "",
                  "| model | anomaly index per set | flagged classes per set |", "|---|---|---|"]
        for name, reps in stab.items():
            lines.append(f"| {label(name)} | "
                         f"{', '.join(f'{x[0]:.2f}' for x in reps)} | {'; '.join(str(x[1]) for x in reps)} |")
    lines += ["", "### Activation Clustering (Table 2): 320 clean + 320 triggered test pairs, PCA-2, 2-means", "",
              "| model | misclustering rate | verdict |", "|---|---|---|"]
    for name, r in results.items():
        ac = r["activation_clustering"]
        lines.append(f"| {label(name)} | {_pct(ac['misclustering'])}% | "
                     f"{SYMBOL[ac['verdict']]} |")
    lines += ["", "### Fine-pruning (Figure 4b): attack metric at the largest pruned fraction that keeps clean "
              "accuracy within 5 points", "",
              "| model | metric | unpruned | at that fraction | fraction |", "|---|---|---|---|---|"]
    for name, r in results.items():
        fp = r["fine_pruning"]
        if not fp["values"]:
            continue
        i = fp["fractions"].index(fp["fraction_accuracy_kept"])
        lines.append(f"| {label(name)} | {fp['metric'].upper()} | "
                     f"{_pct(fp['values'][0])} | {_pct(fp['values'][i])} | {fp['fraction_accuracy_kept']:.2f} |")
    lines += ["", "### TV denoising (Table 3): strongest Chambolle weight keeping clean accuracy within 5 points "
              "of the clean reference model of the same architecture", "",
              "| model | TV weight | CR | FSR | ASR | acc clean images | acc poisoned images | FSR/ASR undenoised |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        sweep, ref_acc = r["tv_denoising"], reference_of(results, name)["metrics"]["acc_clean"]
        ok = [row for row in sweep if row["acc_clean"] >= ref_acc - ACC_FLOOR_DROP] or sweep[:1]
        row = ok[-1]
        base = sweep[0].get("fsr", sweep[0].get("asr"))
        lines.append(f"| {label(name)} | {row['weight']} | {_pct(row.get('cr'))} | "
                     f"{_pct(row.get('fsr'))} | {_pct(row.get('asr'))} | {_pct(row['acc_clean'])} | "
                     f"{_pct(row['acc_trig'])} | {_pct(base)} |")
    lines += ["", "### Re-BN: before -> after re-estimating BatchNorm statistics on 1000 clean training images", "",
              "| model | acc clean | FSR | ASR | max statistics shift |", "|---|---|---|---|---|"]
    for name, r in results.items():
        b, a = r["rebn"]["before"], r["rebn"]["after"]
        arrow = lambda k: "–" if k not in b else f"{_pct(b[k])} -> {_pct(a[k])}"  # noqa: E731
        lines.append(f"| {label(name)} | {arrow('acc_clean')} | {arrow('fsr')} | "
                     f"{arrow('asr')} | {r['rebn']['max_shift']:.3f} |")
    lines += ["", "### Input-level detection: AUROC of 200 triggered vs 200 clean test inputs", "",
              "| model | disagreement | instability | reference | combined (no ref.) | two-sided (no ref.) | combined (+ref.) | best single score | STRIP | Spectral Sig. |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        d = r["detection_auroc"]
        best = d["best_elementary"]
        lines.append(f"| {label(name)} | {d['disagreement']:.3f} | {d['instability']:.3f} | "
                     f"{d['reference']:.3f} | {d['combined_no_reference']:.3f} | {d.get('combined_two_sided_no_reference', float('nan')):.3f} | "
                     f"{d['combined_with_reference']:.3f} | "
                     f"{best[1]:.3f} ({best[0].replace('auroc/', '')}) | {d['strip']:.3f} | {d['spectral']:.3f} |")
    lines += ["", "### `xaisec audit` with 200 triggered test inputs as suspects", "",
              "| model | verdict | " + " | ".join(k for k in next(iter(results.values()))["audit"]["checks"]) + " |",
              "|---|---|" + "---|" * len(next(iter(results.values()))["audit"]["checks"])]
    for name, r in results.items():
        checks = r["audit"]["checks"]
        lines.append(f"| {label(name)} | {r['audit']['verdict']} | "
                     + " | ".join(checks.values()) + " |")
    return "\n".join(lines) + "\n"


def write_tables(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fig4a(results, out)
    fig4b(results, out)
    (out / "tables.md").write_text(tables(results))


if __name__ == "__main__":
    path = Path(sys.argv[1])
    write_tables(json.loads(path.read_text()), path.parent)
