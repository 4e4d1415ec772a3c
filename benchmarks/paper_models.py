"""Explanation-aware training on the papers' architectures, on the CPU at small batch (not a test; prints ratios).

For each model: one plain cross-entropy step against one explanation-aware step (Fang's targeted objective on
Grad-CAM maps with ``create_graph=True``, Softplus surrogate reaching torchvision's functional ReLUs, BatchNorm
frozen and folded). Target: <= 3x for Grad-CAM. GPU figures: ``benchmarks/gpu_check.py``.

    python benchmarks/paper_models.py [--models resnet50 densenet121] [--size 64] [--batch 8] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os

import torch

from paper_steps import training_steps
from timing import median_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet50", "densenet121"])
    parser.add_argument("--explainers", nargs="+", default=["gradcam"])
    parser.add_argument("--size", type=int, default=64, help="image size (resnet20 always runs at 32)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    for arch in args.models:
        size = 32 if arch == "resnet20" else args.size
        for explainer in args.explainers:
            t = median_times(training_steps(arch, size, args.batch, torch.device("cpu"), explainer), args.repeats,
                             warmup=1)
            ratio = t["xai"] / t["plain"]
            verdict = "ok" if explainer != "gradcam" or ratio <= 3.0 else "MISSES"
            print(f"   {arch:12s} {size:3d}px batch {args.batch:3d} {explainer:10s} plain {1000 * t['plain']:8.1f} ms"
                  f"   explanation-aware {1000 * t['xai']:8.1f} ms   ratio {ratio:5.2f}x"
                  + ("  (target <= 3x: " + verdict + ")" if explainer == "gradcam" else ""))
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
