"""Markdown tables of an adv2 run directory's ``metrics.json`` (flat metric records; for ``docs/results_adv2.md``).

Run: ``python docs/results_adv2_tables.py RUN_DIR [RUN_DIR ...]``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from xaisec.runs import read_metrics


def md(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def tables(run_dir: Path) -> str:
    records, c = read_metrics(run_dir)
    m = lambda *parts: records["/".join(parts)].value if "/".join(parts) in records else ""  # noqa: E731
    names = c["interpreters"]
    parts = [f"### {c['dataset']} ({c['arch']}, test accuracy {c['test_accuracy']:.3f}, {c['n_images']} images, "
             f"eps {c['eps']:g}, target maps: {c['target']})"]
    for fam in ("pgd", "stadv"):
        rows = [[n, m(fam, "asr"), m(f"adv2_{fam}", n, "asr"), m(f"adv2_{fam}", n, "confidence"),
                 m(fam, n, "vs_target", "l1"), m(f"adv2_{fam}", n, "vs_target", "l1"), m(fam, n, "vs_target", "iou@0.2"),
                 m(f"adv2_{fam}", n, "vs_target", "iou@0.2"), m(fam, n, "vs_benign", "l1"),
                 m(f"adv2_{fam}", n, "vs_benign", "l1")] for n in names if f"adv2_{fam}/{n}/asr" in records]
        if rows:
            F = fam.upper()
            parts.append(md(["interpreter", f"{F} ASR", "ADV2 ASR", "ADV2 conf", f"{F} L1 tgt", "ADV2 L1 tgt",
                             f"{F} IoU@0.2 tgt", "ADV2 IoU@0.2 tgt", f"{F} L1 ben", "ADV2 L1 ben"], rows))
    ks = sorted({k.rsplit("/", 1)[1] for k in records if k.startswith("adv2_pgd/") and "/vs_target/iou@" in k},
                key=lambda k: float(k[4:]))
    rows = [[n, attack, *(m(prefix, n, "vs_target", k) for k in ks)] for n in names
            for attack, prefix in (("PGD", "pgd"), ("ADV2", "adv2_pgd"))]
    parts.append("Top-k IoU with the target maps (Figure 6):\n\n" + md(["interpreter", "attack", *ks], sorted(rows)))
    transfer = [k.split("/")[2] for k in records if k.startswith("transfer/l1_vs_target/")]
    if transfer:
        aimed = list(dict.fromkeys(transfer))
        parts.append("Transfer, L1 to each interpreter's target map (Table 9; rows: aimed at, columns: read by):\n\n"
                     + md(["aimed at", *names], [[a, *(m("transfer/l1_vs_target", a, n) for n in names)] for a in aimed]))
    if "squeezers" in c:
        head = "detection/feature_squeezing/rates/"
        inputs = list(dict.fromkeys(k[len(head):].rsplit("/", 1)[0] for k in records if k.startswith(head)))
        sq = c["squeezers"] + ["joint"]
        parts.append("Feature squeezing detection rates (Table 4):\n\n"
                     + md(["inputs", *sq], [[i, *(m(head + i, q) for q in sq)] for i in inputs]))
        adaptive = sorted({k.split("/")[2] for k in records if k.startswith("detection/adaptive/")})
        parts.append(md(["adaptive ADV2 vs", "ASR", "L1 tgt", "IoU@0.2 tgt"],
                        [[a, m("detection/adaptive", a, "asr"), m("detection/adaptive", a, "vs_target", "l1"),
                          m("detection/adaptive", a, "vs_target", "iou@0.2")] for a in adaptive]))
    head = "detection/ensemble/rates/"
    rates = [[k[len(head):], r.value] for k, r in records.items() if k.startswith(head)]
    if rates:
        parts.append("Interpreter ensemble:\n\n" + md(["inputs", "flagged"], rates))
    for n in sorted({k.split("/")[1] for k in records if k.startswith("rts_adversarial/")}):
        pre = f"rts_adversarial/{n}"
        parts.append(md(["ADV2 against", "ASR", "L1 tgt", "IoU@0.2 tgt", "L1 ben"],
                        [[n, m("adv2_pgd", n, "asr"), m("adv2_pgd", n, "vs_target", "l1"),
                          m("adv2_pgd", n, "vs_target", "iou@0.2"), m("adv2_pgd", n, "vs_benign", "l1")],
                         [f"{n}^A", m(pre, "adversarial/asr"), m(pre, "adversarial/vs_target/l1"),
                          m(pre, "adversarial/vs_target/iou@0.2"), m(pre, "adversarial/vs_benign/l1")]]))
        levels = list(dict.fromkeys(k.split("/")[3] for k in records if k.startswith(f"{pre}/noise/")))
        parts.append(md(["noise", f"{n} L1", f"{n}^A L1", f"{n} relative", f"{n}^A relative"],
                        [[lv, *(m(pre, "noise", lv, v) for v in (n, f"{n}_adv", f"{n}_relative", f"{n}_adv_relative"))]
                         for lv in levels]))
    parts.append(md(["attack", "images/s"], [[k, v] for k, v in c.get("images_per_second", {}).items()]))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    for run_dir in parser.parse_args().run_dirs:
        print(tables(run_dir), end="\n\n")


if __name__ == "__main__":
    main()
