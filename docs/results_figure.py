"""The side-by-side figure of docs/results.md: the attacked models' maps of the same triggered test images.

    python docs/results_figure.py OUT.png runs/latka_badnets runs/latka_full_disguise ...

One column per run directory (the sample tensors of its ``evaluation.safetensors``): the triggered inputs with the attacked model's map of
its first explainer overlaid, plus a first column of the reference model's maps from the first run.
"""
from __future__ import annotations

import sys
from pathlib import Path

from xaisec.report.panels import map_grid
from xaisec.runs.backdoor import Evaluation


def main(out: str, runs: list[str], n: int = 4) -> None:
    columns, rows = [], None
    for i, run in enumerate(map(Path, runs)):
        s = Evaluation.load(run / "evaluation.safetensors").samples
        explainer = next(k.split("/")[2] for k in s if k.startswith("maps/attacked/"))
        if i == 0:
            columns.append((f"reference model\n({explainer})", s["x_trig"][:n], s[f"maps/reference/{explainer}/trig"][:n]))
            rows = [f"y={int(y)}" for y in s["y"][:n]]
        columns.append((f"{run.name}\n({explainer})", s["x_trig"][:n], s[f"maps/attacked/{explainer}/trig"][:n]))
    map_grid(columns, out, row_labels=rows, title="maps of triggered test images")
    print(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
