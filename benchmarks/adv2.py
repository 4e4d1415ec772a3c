"""Throughput of ADV2 attacks: a whole batch at once against the same images attacked one at a time.

Run: ``python benchmarks/adv2.py [--interpreters cam,simplegrad,rts,mask] [--batch 64] [--steps 40]``.
Uses a small_cnn on mnist-sized inputs (untrained weights: speed does not depend on them) and prints images per
second for both ways and their ratio (target: >= 10x), and the ratio of a bare forward+backward pass of the batch to
one of a single image (what batching can gain at most on this machine). Not a test: timings depend on the machine.

``python benchmarks/adv2.py --per-step`` prints xaisec's cost per image per step of the two attacks measured against
the ADV2 authors' loops (:func:`per_step_attack`; docs/performance.md has the comparison and its command).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from xaisec.evasion import PGD, Adv2PGD, Adv2StAdv, InterpreterTerm, MaskTerm, patch_maps
from xaisec.explainers import FeatureSaliencyNet, build
from xaisec.maps import MapPostprocess
from xaisec.models import build_model

from timing import median_times


def make_attack(kind: str, model, name: str, steps: int):
    post = MapPostprocess(pool=2)
    if name == "pgd":
        return PGD(model, eps=0.2, step=0.01, steps=steps)
    if name == "rts":
        e = build("rts", model, saver=FeatureSaliencyNet.for_classifier(model, (1, 28, 28), 10).eval())
    elif name == "mask":
        e = build("mask", model, steps=50)
    else:
        e = build(name, model)
    term = (MaskTerm(e, post=post, inner_steps=2) if name == "mask"
            else InterpreterTerm(e, post=post, smooth_beta=10.0 if name == "simplegrad" else None))
    cls = Adv2PGD if kind == "pgd" else Adv2StAdv
    return cls(model, [term], steps=steps, warmup=steps // 4, c=10.0)


#: models of the per-step comparison: (architecture, input shape)
PER_STEP_MODELS = {"small_cnn": (1, 28, 28), "vgg_small": (3, 32, 32)}


def per_step_attack(model, name: str, steps: int) -> Adv2PGD:
    """Stage-2 ADV2 (no warm-up) on ``cam`` or ``simplegrad`` (Softplus(10) surrogate, maps pooled 2x2), as the
    authors' CAM and gradient-saliency loops: per step one forward of the classifier, the map (for simplegrad one
    forward and one double backward of the surrogate), one backward to the input."""
    e = build(name, model)
    term = InterpreterTerm(e, post=MapPostprocess(pool=2), smooth_beta=10.0 if name == "simplegrad" else None)
    return Adv2PGD(model, [term], steps=steps, warmup=0, c=10.0)


def per_step_inputs(arch: str, batch: int, seed: int = 0):
    """``(model, x, y, target maps)`` of the per-step comparison: untrained eval-mode model, random images."""
    torch.manual_seed(seed)
    shape = PER_STEP_MODELS[arch]
    model = build_model(arch, shape, 10).eval()
    x, y = torch.rand(batch, *shape), torch.randint(0, 10, (batch,))
    return model, x, y, patch_maps(batch, shape[1:], 0.15, torch.Generator().manual_seed(seed))


def print_per_step(batch: int, steps: int, repeats: int) -> None:
    print(f"xaisec Adv2PGD, stage 2, batch {batch}, {steps} steps, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f}")
    for arch in PER_STEP_MODELS:
        model, x, y, maps = per_step_inputs(arch, batch)
        runs = {name: (lambda a=per_step_attack(model, name, steps), n=name: a(x, y, target_maps={n: maps}))
                for name in ("cam", "simplegrad")}
        for name, t in median_times(runs, repeats).items():
            print(f"{arch:<10}{name:<12}{1e3 * t / (batch * steps):8.3f} ms per image per step")


def compute_ceiling(model, x: torch.Tensor, y: torch.Tensor, steps: int = 20, n_single: int = 8) -> float:
    """How much faster one forward+backward of the whole batch is, per image, than of one image: the most that
    batching can gain on this machine when the attack adds no overhead of its own."""
    def step(xb, yb):
        xb = xb.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(xb), yb, reduction="sum"), xb)

    step(x, y)  # warm-up of both shapes
    step(x[:1], y[:1])
    batched = timed(lambda: [step(x, y) for _ in range(steps)]) / len(x)
    single = timed(lambda: [step(x[i:i + 1], y[i:i + 1]) for _ in range(steps) for i in range(n_single)]) / n_single
    return single / batched


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interpreters", default="pgd,cam,gradcam,simplegrad,rts,mask")
    parser.add_argument("--family", default="pgd", choices=["pgd", "stadv"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--single", type=int, default=8, help="images attacked one at a time (time scaled up)")
    parser.add_argument("--per-step", action="store_true", help="only the per-image per-step cost (see above)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of --per-step")
    args = parser.parse_args()
    if args.per_step:
        print_per_step(args.batch, args.steps, args.repeats)
        return
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 28, 28), 10).eval()
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    maps = patch_maps(args.batch, (28, 28), 0.15, torch.Generator().manual_seed(0))
    print(f"{args.family}-based ADV2, small_cnn 28x28, batch {args.batch}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads")
    print(f"plain forward+backward, batch {args.batch} vs one image, per image: "
          f"{compute_ceiling(model, x, y):.1f}x (the ceiling of batching on this machine)")
    print(f"{'interpreter':<12}{'batched img/s':>15}{'one-by-one img/s':>18}{'ratio':>8}")
    for name in args.interpreters.split(","):
        attack = make_attack(args.family, model, name, args.steps)
        kw = lambda sl: {} if name == "pgd" else {"target_maps": {name: maps[sl]}}  # noqa: E731
        attack(x[:2], y[:2], **kw(slice(0, 2)))  # warm-up
        batched = timed(lambda: attack(x, y, **kw(slice(None))))
        n = min(args.single, args.batch)
        single = timed(lambda: [attack(x[i:i + 1], y[i:i + 1], **kw(slice(i, i + 1))) for i in range(n)]) / n
        rate_b, rate_s = args.batch / batched, 1 / single
        print(f"{name:<12}{rate_b:>15.1f}{rate_s:>18.1f}{rate_b / rate_s:>8.1f}")


if __name__ == "__main__":
    main()
