"""Markdown tables of an adv2 run directory's ``metrics.json`` (for ``docs/results_adv2.md``).

Run: ``python docs/results_adv2_tables.py RUN_DIR [RUN_DIR ...]``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def md(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def tables(run_dir: Path) -> str:
    m = json.loads((run_dir / "metrics.json").read_text())
    s, names = m["setup"], m["setup"]["interpreters"]
    parts = [f"### {s['dataset']} ({s['arch']}, test accuracy {s['test_accuracy']:.3f}, {s['n_images']} images, "
             f"eps {s['eps']:g}, target maps: {s['target']})"]
    for fam in ("pgd", "stadv"):
        if fam not in m:
            continue
        rows = []
        for n in names:
            adv, base = m[f"adv2_{fam}"].get(n), m[fam]
            if adv is None:
                continue
            a, p = adv["maps"][n], base["maps"].get(n)
            rows.append([n, base["asr"], adv["asr"], adv["confidence"], p["vs_target"]["l1"], a["vs_target"]["l1"],
                         p["vs_target"]["iou@0.2"], a["vs_target"]["iou@0.2"], p["vs_benign"]["l1"], a["vs_benign"]["l1"]])
        parts.append(md(["interpreter", f"{fam.upper()} ASR", "ADV2 ASR", "ADV2 conf", f"{fam.upper()} L1 tgt",
                         "ADV2 L1 tgt", f"{fam.upper()} IoU@0.2 tgt", "ADV2 IoU@0.2 tgt", f"{fam.upper()} L1 ben",
                         "ADV2 L1 ben"], rows))
    ks = sorted({k for n in names for k in m["adv2_pgd"][n]["maps"][n]["vs_target"] if k.startswith("iou@")},
                key=lambda k: float(k[4:]))
    rows = [[n, "PGD", *(m["pgd"]["maps"][n]["vs_target"][k] for k in ks)] for n in names]
    rows += [[n, "ADV2", *(m["adv2_pgd"][n]["maps"][n]["vs_target"][k] for k in ks)] for n in names]
    parts.append("Top-k IoU with the target maps (Figure 6):\n\n" + md(["interpreter", "attack", *ks], sorted(rows)))
    if "transfer" in m:
        t = m["transfer"]["l1_vs_target"]
        cols = list(next(iter(t.values())))
        parts.append("Transfer, L1 to each interpreter's target map (Table 9; rows: aimed at, columns: read by):\n\n"
                     + md(["aimed at", *cols], [[k, *(v[c] for c in cols)] for k, v in t.items()]))
    det = m.get("detection", {})
    if "feature_squeezing" in det:
        fs = det["feature_squeezing"]
        sq = fs["squeezers"] + ["joint"]
        parts.append("Feature squeezing detection rates (Table 4):\n\n"
                     + md(["inputs", *sq], [[k, *(v[q] for q in sq)] for k, v in fs["rates"].items()]))
        parts.append(md(["adaptive ADV2 vs", "ASR", "L1 tgt", "IoU@0.2 tgt"],
                        [[k, v["asr"], v["maps"][k]["vs_target"]["l1"], v["maps"][k]["vs_target"]["iou@0.2"]]
                         for k, v in fs["adaptive_attack"].items()]))
    if "ensemble" in det:
        e = det["ensemble"]
        parts.append(f"Interpreter ensemble ({', '.join(e['members'])}, {e['metric']}):\n\n"
                     + md(["inputs", "flagged"], [[k, v] for k, v in e["rates"].items()]))
    if "rts_adversarial" in m:
        r = m["rts_adversarial"]
        parts.append(md(["ADV2 against", "ASR", "L1 tgt", "IoU@0.2 tgt", "L1 ben"],
                        [[k, r[k]["asr"], r[k]["maps"]["rts"]["vs_target"]["l1"], r[k]["maps"]["rts"]["vs_target"]["iou@0.2"],
                          r[k]["maps"]["rts"]["vs_benign"]["l1"]] for k in ("rts", "rts_adv")]))
        parts.append(md(["noise", "RTS L1", "RTS^A L1", "RTS relative", "RTS^A relative"],
                        [[k, v["rts"], v["rts_adv"], v.get("rts_relative", ""), v.get("rts_adv_relative", "")]
                         for k, v in r["noise_sensitivity_l1"].items()]))
    parts.append(md(["attack", "images/s"], [[k, v] for k, v in m.get("images_per_second", {}).items()]))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    for run_dir in parser.parse_args().run_dirs:
        print(tables(run_dir), end="\n\n")


if __name__ == "__main__":
    main()
