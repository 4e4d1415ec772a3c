"""Print the markdown results table of docs/results.md from run directories' metrics.json.

    python docs/results_table.py runs/default runs/fang_targeted_vbp ...
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def row(run: Path) -> str:
    raw = json.loads((run / "metrics.json").read_text())
    doc = {**raw["context"], "metrics": raw["metrics"]}
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    explainers = doc["explainers"]
    asr = m.get("attacked/asr")
    fsr = [m.get(f"attacked/{e}/fsr") for e in explainers]
    cr = [m.get(f"attacked/{e}/cr") for e in explainers]
    changes_maps = any(v is not None for v in cr)
    mass = " / ".join(f"{pct(m.get(f'reference/{e}/trigger_hit_trig'))} → {pct(m.get(f'attacked/{e}/trigger_hit_trig'))}"
                      for e in explainers)
    mse = " / ".join(f"{m[f'attacked/{e}/mse_ref_clean']:.3f}" for e in explainers)
    cells = [f"`{run.name}`", doc.get("arch", ""), ", ".join(explainers), doc["trigger"].split(":")[0],
             f"{pct(m['reference/top1_clean'])} → {pct(m['attacked/top1_clean'])}",
             pct(m["attacked/top1_trig"]), pct(asr),
             " / ".join(pct(v) for v in fsr) if any(v is not None for v in fsr) else "–",
             " / ".join(pct(v) for v in cr) if changes_maps else "–",
             mse, mass, str(doc.get("attack_epochs"))]
    return "| " + " | ".join(cells) + " |"


def main(paths: list[str]) -> None:
    print("| run | model | explainers | trigger | clean Top-1 % (ref → attacked) | triggered Top-1 % | ASR % | FSR % | CR % "
          "| clean-map MSE to ref | maps pointing at the trigger % (ref → attacked) | epochs |")
    print("|" + "---|" * 12)
    for p in paths:
        print(row(Path(p)))


if __name__ == "__main__":
    main(sys.argv[1:])
