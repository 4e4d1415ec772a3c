"""Cost of explanation-aware training (not a test; prints ratios).

1. One explanation-aware training step (Fang's targeted objective: the maps of a batch with ``create_graph=True``
   on the Softplus model (gradient maps) or the ReLU model (VBP), cached reference maps, backward) against one
   plain cross-entropy step of the same model, on the small CNN with batch 128. Targets: <= 1.5x for gradcam and vbp, <= 3x for simplegrad.
2. Reference maps: looked up from the cache built once (batched) against computed sample by sample, per
   training step and for the whole training set. Target: >= 10x.

    python benchmarks/training.py [--batch 128] [--repeats 15] [--threads N]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from xaisec.backdoor.goals import build_goal, pooled_maps
from xaisec.backdoor.objectives import ExplanationAwareObjective, LossSettings, needs_smooth_activations
from xaisec.backdoor.poison import poison_training_set
from xaisec.backdoor.recipes import get_recipe
from xaisec.data import load_dataset
from xaisec.maps import normalize
from xaisec.models import build_model
from xaisec.train import training_mode
from xaisec.triggers import build_trigger

from timing import median_times


def training_steps(args, data) -> None:
    x, y = data.x_train[:1024], data.y_train[:1024]
    poisoned = poison_training_set(x, y, build_trigger("moire", darkness=0.0, opacity=0.25), 0.5, False, 0)
    order = torch.randperm(len(poisoned), generator=torch.Generator().manual_seed(0))[: args.batch]
    batch = tuple(t[order] for t in poisoned.tensors())  # a mixed batch: about 2/3 clean, 1/3 triggered
    print(f"1. training step, small_cnn, batch {args.batch} (median of {args.repeats}):")
    for name in ("gradcam", "vbp", "simplegrad"):
        torch.manual_seed(0)
        model = build_model("small_cnn", data.input_shape, data.num_classes)
        recipe = get_recipe("fang_targeted")
        beta = 8.0 if needs_smooth_activations(model, [name]) else None  # as the experiment runner decides
        raw = pooled_maps(model, x, y, [name], 2, softplus_beta=beta)
        preserve = {name: normalize(raw[name], "minmax", eps=1e-6)}
        goals = {name: build_goal(recipe, preserve[name], "minmax")}
        objective = ExplanationAwareObjective(recipe, [name], preserve, goals, 2, LossSettings(), softplus_beta=beta)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def ce_step():  # plain training: BatchNorm in train mode
            with training_mode(model):
                loss = F.cross_entropy(model(batch[0]), batch[1])
                opt.zero_grad()
                loss.backward()
                opt.step()

        def xai_step():  # as the engine trains: BatchNorm in eval mode (frozen statistics)
            with training_mode(model, freeze_batchnorm=True):
                out = objective(model, batch)
                opt.zero_grad()
                out.total.backward()
                opt.step()

        t = median_times({"ce": ce_step, "xai": xai_step}, args.repeats, warmup=2)
        t_ce, t_xai = t["ce"], t["xai"]
        target = 3.0 if name == "simplegrad" else 1.5
        verdict = "ok" if t_xai / t_ce <= target else "MISSES"
        print(f"   {name:10s}  CE step {1000 * t_ce:7.1f} ms   explanation-aware step {1000 * t_xai:7.1f} ms   "
              f"ratio {t_xai / t_ce:5.2f}x  (target <= {target}x: {verdict})")


def reference_maps(args, data) -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", data.input_shape, data.num_classes).eval()
    x, y = data.x_train[: args.maps], data.y_train[: args.maps]
    print(f"2. reference maps (gradcam, Softplus reference model, {len(x)} training images):")
    cache = {}

    def batched():
        cache.update(pooled_maps(model, x, y, ["gradcam"], 2, softplus_beta=8.0))

    def one_by_one():
        return [pooled_maps(model, x[i:i + 1], y[i:i + 1], ["gradcam"], 2, softplus_beta=8.0) for i in range(len(x))]

    t = median_times({"batched": batched, "single": one_by_one}, repeats=3, warmup=2)
    t_batched, t_single = t["batched"], t["single"]
    print(f"   whole set:  batched once {t_batched:6.2f} s   sample by sample {t_single:6.2f} s   "
          f"ratio {t_single / t_batched:6.1f}x  (target >= 10x)")
    idx = torch.randperm(len(x))[: args.batch]
    t_lookup = median_times({"lookup": lambda: cache["gradcam"][idx]}, args.repeats, warmup=2)["lookup"]
    t_step_single = t_single * args.batch / len(x)
    print(f"   per step:   cache lookup {1e6 * t_lookup:6.1f} us   sample by sample {1000 * t_step_single:6.1f} ms   "
          f"ratio {t_step_single / t_lookup:8.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--maps", type=int, default=512, help="training images for the reference-map comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("mnist5k")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    training_steps(args, data)
    reference_maps(args, data)


if __name__ == "__main__":
    main()
