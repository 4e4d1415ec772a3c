"""Cost of subnormal floats: one explanation-aware training step with and without flushing them to zero.

The step is the default experiment's (Fang's targeted attack on Grad-CAM, small_cnn, mnist5k, batch 128, Softplus(8),
BatchNorm frozen): the maps with ``create_graph=True``, the loss and its backward (no optimiser step, so every
repeat sees the same weights). It runs on the reference model (as training starts) and on the attacked model (as it
ends), whose gradients reach the subnormal range; flushing (:func:`xaisec.numerics.flush_denormals`, on by default
in :func:`xaisec.train.fit`) is switched per call, interleaved. Prints ms per step, the ratio and the share of
subnormal values among the gradients that reach the last conv's output. Not a test: timings depend on the CPU and its load.

    python -m xaisec run --out runs/default      # once: writes reference.safetensors and attacked.safetensors
    python benchmarks/denormals.py runs/default [--batch 128] [--repeats 9]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from xaisec.backdoor.goals import build_goal, pooled_maps
from xaisec.backdoor.objectives import ExplanationAwareObjective, LossSettings
from xaisec.backdoor.poison import poison_training_set
from xaisec.backdoor.recipes import get_recipe
from xaisec.data import load_dataset
from xaisec.io import load_weights
from xaisec.maps import normalize
from xaisec.models import build_model
from xaisec.numerics import flush_denormals
from xaisec.train import training_mode
from xaisec.triggers import build_trigger

from timing import median_times

SOFTPLUS_BETA = 8.0


def subnormal_share(t: torch.Tensor) -> float:
    """Share of the non-zero entries of ``t`` whose magnitude is below float32's smallest normal number."""
    nonzero = t[t != 0].abs()
    return (nonzero < torch.finfo(torch.float32).tiny).float().mean().item() if len(nonzero) else 0.0


def step_of(model, batch, objective):
    def step() -> None:
        with training_mode(model, freeze_batchnorm=True):
            model.zero_grad(set_to_none=True)
            objective(model, batch).total.backward()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run directory of `xaisec run` (reference/attacked.safetensors)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist5k")
    x, y = data.x_train[:1024], data.y_train[:1024]
    poisoned = poison_training_set(x, y, build_trigger("moire", darkness=0.0, opacity=0.25), 0.5, False, 0)
    order = torch.randperm(len(poisoned), generator=torch.Generator().manual_seed(0))[: args.batch]
    batch = tuple(t[order] for t in poisoned.tensors())
    recipe = get_recipe("fang_targeted")
    print(f"torch {torch.__version__}, 1 thread, batch {args.batch}, median of {args.repeats}, "
          f"load {os.getloadavg()[0]:.2f}")
    for name in ("reference", "attacked"):
        model = build_model("small_cnn", data.input_shape, data.num_classes)
        load_weights(model, args.run / f"{name}.safetensors")
        preserve = {"gradcam": normalize(pooled_maps(model, x, y, ["gradcam"], 2, softplus_beta=SOFTPLUS_BETA)["gradcam"],
                                         "minmax", eps=1e-6)}
        goals = {"gradcam": build_goal(recipe, preserve["gradcam"], "minmax")}
        objective = ExplanationAwareObjective(recipe, ["gradcam"], preserve, goals, 2, LossSettings(alpha=1.0, beta=0.1),
                                              softplus_beta=SOFTPLUS_BETA)
        step = step_of(model, batch, objective)
        grads: list[torch.Tensor] = []  # every gradient that reaches the last conv's output (both backward passes)
        last_conv = [m for m in model.features if isinstance(m, torch.nn.Conv2d)][-1]

        def watch(module, inputs, out) -> None:
            out.register_hook(grads.append)

        handle = last_conv.register_forward_hook(watch)
        step()
        handle.remove()
        share = subnormal_share(torch.cat([g.flatten() for g in grads]))

        def flushed():
            with flush_denormals():
                step()

        t = median_times({"default": step, "flushed": flushed}, args.repeats, warmup=1)
        print(f"{name:<10} default {1e3 * t['default']:7.1f} ms   flushed {1e3 * t['flushed']:7.1f} ms   "
              f"ratio {t['default'] / t['flushed']:5.2f}x   subnormal share of gradients at the last conv {100 * share:.2f}%")
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
