"""Speed of xaisec's explainers against Captum on the same model and batch, in one process.

Run: ``python benchmarks/explainers.py [--arch resnet20] [--batch 64] [--repeats 10]``.
Prints median wall times and ratios (> 1 means xaisec is faster). Not a test: timings depend on the machine.
"""
from __future__ import annotations

import argparse
import warnings

import torch

from xaisec.explainers import build, explain
from xaisec.models import build_model

from timing import median_times

warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--ig-steps", type=int, default=32)
    args = parser.parse_args()
    from captum.attr import InputXGradient, IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    shape = (1, 28, 28) if args.arch == "small_cnn" else (3, 32, 32)
    torch.manual_seed(0)
    model = build_model(args.arch, shape, 10).eval()
    x = torch.rand(args.batch, *shape)
    y = torch.randint(0, 10, (args.batch,))
    size = tuple(x.shape[-2:])

    def captum_gradcam():
        a = LayerGradCam(model, model.features).attribute(x, y, relu_attributions=True)
        return LayerAttribution.interpolate(a, size, "bilinear")

    pairs = {
        "gradcam": (lambda: build("gradcam", model)(x, y), captum_gradcam),
        "simplegrad": (lambda: build("simplegrad", model)(x, y),
                       lambda: Saliency(model).attribute(x, y, abs=True).amax(1, keepdim=True)),
        "inputxgrad": (lambda: build("inputxgrad", model)(x, y),
                       lambda: InputXGradient(model).attribute(x, y).sum(1, keepdim=True)),
        "ig": (lambda: build("ig", model, steps=args.ig_steps)(x, y),
               lambda: IntegratedGradients(model).attribute(x, target=y, n_steps=args.ig_steps).sum(1, keepdim=True)),
    }
    print(f"{args.arch}, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'method':<12}{'xaisec ms':>12}{'captum ms':>12}{'ratio':>8}")
    for name, (ours, theirs) in pairs.items():
        t = median_times({"ours": ours, "theirs": theirs}, args.repeats)
        t_ours, t_theirs = t["ours"], t["theirs"]
        print(f"{name:<12}{1e3 * t_ours:>12.1f}{1e3 * t_theirs:>12.1f}{t_theirs / t_ours:>8.2f}")

    methods = ["gradcam", "simplegrad", "vbp"]
    explainers = [build(m, model) for m in methods]
    t = median_times({"joint": lambda: explain(model, x, y, methods),
                      "separate": lambda: [e(x, y) for e in explainers]}, args.repeats)
    t_joint, t_separate = t["joint"], t["separate"]
    print(f"joint {'+'.join(methods)}: {1e3 * t_joint:.1f} ms vs separately {1e3 * t_separate:.1f} ms "
          f"-> {t_separate / t_joint:.2f}x faster")


if __name__ == "__main__":
    main()
