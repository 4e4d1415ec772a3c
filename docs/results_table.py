"""Print the markdown results table of docs/results.md from run directories' metrics.json.

    python docs/results_table.py runs/default runs/fang_targeted_vbp ...
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

TARGETS = {"drop": 0.02, "fsr": 0.9, "cr": 0.9, "asr": 0.95}


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def row(run: Path) -> str:
    raw = json.loads((run / "metrics.json").read_text())
    doc = {**raw["context"], "metrics": raw["metrics"]}
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    explainers = doc["explainers"]
    misses = []
    drop = m["attacked/top1_drop"]
    if drop > TARGETS["drop"]:
        misses.append("clean Top-1")
    asr = m.get("attacked/asr")
    if asr is not None and asr < TARGETS["asr"]:
        misses.append("ASR")
    fsr = [m.get(f"attacked/{e}/fsr") for e in explainers]
    cr = [m.get(f"attacked/{e}/cr") for e in explainers]
    changes_maps = any(v is not None for v in cr)
    if changes_maps:
        if any(v < TARGETS["fsr"] for v in fsr):
            misses.append("FSR")
        if any(v < TARGETS["cr"] for v in cr):
            misses.append("CR")
    if doc["recipe"] in ("noppel_ep", "latka_full_disguise"):
        hits = [m.get(f"attacked/{e}/trigger_hit_trig") for e in explainers]
        if any(v is not None and v > 0.1 for v in hits):
            misses.append("maps point at the trigger")
    mass = " / ".join(f"{pct(m.get(f'reference/{e}/trigger_hit_trig'))} → {pct(m.get(f'attacked/{e}/trigger_hit_trig'))}"
                      for e in explainers)
    mse = " / ".join(f"{m[f'attacked/{e}/mse_ref_clean']:.3f}" for e in explainers)
    cells = [f"`{run.name}`", doc.get("arch", ""), ", ".join(explainers), doc["trigger"].split(":")[0],
             f"{pct(m['reference/top1_clean'])} → {pct(m['attacked/top1_clean'])}",
             pct(m["attacked/top1_trig"]), pct(asr),
             " / ".join(pct(v) for v in fsr) if any(v is not None for v in fsr) else "–",
             " / ".join(pct(v) for v in cr) if changes_maps else "–",
             mse, mass, str(doc.get("attack_epochs")), "ok" if not misses else "misses " + ", ".join(misses)]
    return "| " + " | ".join(cells) + " |"


def main(paths: list[str]) -> None:
    print("| run | model | explainers | trigger | clean Top-1 % (ref → attacked) | triggered Top-1 % | ASR % | FSR % | CR % "
          "| clean-map MSE to ref | maps pointing at the trigger % (ref → attacked) | epochs | targets |")
    print("|" + "---|" * 13)
    for p in paths:
        print(row(Path(p)))


if __name__ == "__main__":
    main(sys.argv[1:])
