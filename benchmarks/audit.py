"""Wall time of ``xaisec audit`` on the mnist5k small CNN, per check (the brief: < 5 minutes on 2 cores).

Run: ``python benchmarks/audit.py [--weights W.safetensors] [--threads 2] [--suspects]``. Without ``--weights`` a
clean small_cnn is trained first (not timed). With ``--suspects``, 200 test digits with a white 4x4 patch are
screened too (STRIP, Activation Clustering, Spectral Signatures run then). Prints the per-check times from
``audit.json``. Not a test: timings depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xaisec.cli import main as cli
from xaisec.data import load_dataset
from xaisec.io import save_weights
from xaisec.models import build_model
from xaisec.train import train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, help="small_cnn weights for mnist5k (default: train a clean one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=300)
    parser.add_argument("--suspects", action="store_true", help="also screen 200 patched test digits")
    parser.add_argument("--out", type=Path, help="audit output folder (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="xaisec-audit-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    weights = args.weights
    if weights is None:
        data = load_dataset("mnist5k")
        model = build_model("small_cnn", data.input_shape, data.num_classes)
        train_classifier(model, data.x_train, data.y_train, epochs=10, lr=3e-3, progress=False)
        weights = save_weights(model, out / "clean.safetensors")
    argv = ["audit", "--model", str(weights), "--arch", "small_cnn", "--data", "mnist5k", "--out", str(out / "audit"),
            "--budget", str(args.budget)]
    if args.suspects:
        data = load_dataset("mnist5k")
        x = data.x_test[:200].clone()
        x[..., -6:-2, -6:-2] = 1.0
        np.savez(out / "suspects.npz", x=x.numpy())
        argv += ["--suspects", str(out / "suspects.npz")]
    start = time.perf_counter()
    code = cli(argv)
    wall = time.perf_counter() - start
    report = json.loads((out / "audit" / "audit.json").read_text())
    print(f"\nxaisec audit exit {code}: {wall:.1f} s wall on {args.threads} thread(s) (budget {args.budget:.0f} s)")
    for name in report["check_order"]:
        check = report["checks"][name]
        print(f"  {name:24s} {check['seconds']:7.1f} s  {check['verdict']}")


if __name__ == "__main__":
    main()
