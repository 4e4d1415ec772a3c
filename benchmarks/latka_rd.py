"""Data-efficient BadNets on mnist5k: representation-distance (RD) selection against random selection.

Latka et al. ("Stealthy Sabotage: Backdoor Attacks against Explainable Machine Learning") poison very few
training images, chosen by RD (Xia et al., "Data-Efficient Backdoor Attacks", IJCAI 2022). For each budget
(poisoned images out of the 4,000 training images) and seed, the chosen images are *replaced* by their triggered
versions relabelled to the target class (BadNets: white 4x4 patch, bottom right, target 0 as
``configs/latka_badnets.yaml``), a small_cnn is trained from scratch, and the attack success rate (ASR: triggered
test images of other classes classified as the target) is measured. RD and random selection get the same budget
and the same victim training; the table reports ASR and clean accuracy, mean ± std over the seeds.

    python benchmarks/latka_rd.py [--budgets 5 10 20 40] [--seeds 0 1 2] [--rounds 10] [--score-epochs 3]
                                  [--epochs 6] [--width 16] [--lr 1e-2] [--batch-size 64] [--threads 1]
                                  [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from xaisec.backdoor.evaluate import attack_success_rate
from xaisec.backdoor.poison import apply_trigger, poison_training_set
from xaisec.backdoor.selection import random_select, rd_select
from xaisec.data import load_dataset
from xaisec.models import build_model
from xaisec.train import accuracy, predict, train_classifier
from xaisec.triggers import build_trigger

TARGET = 0


def victim_metrics(data, trigger, indices, args, seed: int) -> dict[str, float]:
    poisoned = poison_training_set(data.x_train, data.y_train, trigger, 1.0, True, TARGET, mode="replace",
                                   indices=indices)
    torch.manual_seed(seed)
    model = build_model("small_cnn", data.input_shape, data.num_classes, width=args.width)
    train_classifier(model, poisoned.x, poisoned.y, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                     seed=seed, progress=False)
    pred = predict(model, apply_trigger(trigger, data.x_test)).argmax(1)
    return {"asr": attack_success_rate(pred, data.y_test, TARGET), "acc": accuracy(model, data.x_test, data.y_test)}


def mean_std(values: list[float]) -> str:
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=10, help="RD filtering rounds (the paper: about 30)")
    parser.add_argument("--score-epochs", type=int, default=3, help="epochs of each round's score model (paper: 6)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the victim model")
    parser.add_argument("--width", type=int, default=16, help="small_cnn width (score and victim models)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (score and victim models)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the raw results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist5k")
    trigger = build_trigger("patch", size=4, position="bottom_right", colour=1.0)
    make_model = lambda: build_model("small_cnn", data.input_shape, data.num_classes, width=args.width)  # noqa: E731
    start = time.time()
    results: dict[str, dict[str, list[float]]] = {}
    for n in args.budgets:
        for seed in args.seeds:
            chosen = {"random": random_select(data.y_train, n, TARGET, seed),
                      "rd": rd_select(data.x_train, data.y_train, trigger, n, TARGET, make_model, rounds=args.rounds,
                                      epochs=args.score_epochs, lr=args.lr, batch_size=args.batch_size,
                                      seed=seed).indices}
            for method, idx in chosen.items():
                m = victim_metrics(data, trigger, idx, args, seed)
                for key, value in m.items():
                    results.setdefault(f"{n}/{method}", {}).setdefault(key, []).append(value)
                print(f"budget {n:3d} seed {seed} {method:6s}: ASR {100 * m['asr']:5.1f}%  "
                      f"clean acc {100 * m['acc']:5.1f}%  ({time.time() - start:.0f} s)", flush=True)
    print("\n| poisoned images (of 4,000) | rate | ASR random (%) | ASR RD (%) | clean acc random (%) | clean acc RD (%) |")
    print("|---|---|---|---|---|---|")
    for n in args.budgets:
        r, d = results[f"{n}/random"], results[f"{n}/rd"]
        print(f"| {n} | {n / len(data.x_train):.4f} | {mean_std(r['asr'])} | {mean_std(d['asr'])} | "
              f"{mean_std(r['acc'])} | {mean_std(d['acc'])} |")
    load = os.getloadavg()
    print(f"\nseeds {args.seeds}; RD: {args.rounds} rounds x {args.score_epochs} epochs; victim {args.epochs} epochs; "
          f"small_cnn width {args.width}, Adam lr {args.lr:g}, batch {args.batch_size}; {args.threads} thread(s); {time.time() - start:.0f} s; "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; torch {torch.__version__}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
