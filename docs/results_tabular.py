"""The tabular backdoor of docs/results_tabular.md (Fang & Choromanska, Fig. 1b) on scikit-learn's breast_cancer.

    python docs/results_tabular.py OUT_DIR

Trains the reference MLP, runs the targeted and the non-targeted attack on SimpleGrad (trigger: columns 2 and 3
set to 1 and 0; targeted goal: column 1), prints the metrics as a Markdown table and writes one bar chart per attack.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from xaisec.backdoor.tabular import TabularAttack, attack_tabular, evaluate_tabular, train_reference_mlp
from xaisec.backdoor.tabular_figures import attribution_bars
from xaisec.data import load_dataset, tabular_feature_names
from xaisec.triggers import FeatureTrigger


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    start = time.time()
    data = load_dataset("sklearn_tabular", table="breast_cancer")
    names = tabular_feature_names("breast_cancer")
    trigger = FeatureTrigger([2, 3], [1.0, 0.0])
    reference = train_reference_mlp(data)
    rows = {}
    for recipe in ("fang_targeted", "fang_nontargeted"):
        settings = TabularAttack(recipe=recipe, target_features=(1,))
        model = attack_tabular(reference, data, trigger, settings)
        result = evaluate_tabular(model, reference, data, trigger, settings)
        rows[recipe] = result.metrics
        highlight = (1, 2, 3) if recipe == "fang_targeted" else (2, 3)
        attribution_bars(result.attributions["simplegrad"], names, Path(out_dir) / f"breast_cancer_{recipe}.png",
                         f"{recipe}, SimpleGrad, breast_cancer MLP (red: trigger / target columns)", highlight)
    keys = sorted({k for m in rows.values() for k in m})
    print("| metric | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{m[k]:.3f}" if k in m else "" for m in rows.values()) + " |")
    load = os.getloadavg()
    print(f"\n{time.time() - start:.0f} s on 1 thread, load {load[0]:.2f}; torch {torch.__version__}")


if __name__ == "__main__":
    main(sys.argv[1])
