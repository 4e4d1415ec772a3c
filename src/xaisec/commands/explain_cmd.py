"""``xaisec explain``: train (or load) a small model and draw a grid of test images x explainers."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ..data import load_data
from ..errors import XaisecError
from ..explainers import explain
from ..io import atomic_write_json, check_writable_dir, load_weights, save_weights
from ..models import build_model
from ..report.figures import explanation_grid
from ..train import accuracy, train_classifier
from ..validation import check_int

log = logging.getLogger(__name__)
DEFAULT_METHODS = "gradcam,gradcampp,simplegrad,inputxgrad,ig,smoothgrad,gradshap,vbp"


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="train or load a small model and write a grid of explanations (PNG)")
    p.add_argument("--dataset", default="mnist5k",
                   help="data: a dataset name (NAME or NAME:key=value,...), an .npz file with x and y, or an image "
                        "folder (default: mnist5k)")
    p.add_argument("--arch", default="small_cnn", help="model architecture (default: small_cnn)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated explainers")
    p.add_argument("--weights", type=Path, help="safetensors weights to explain (default: <out>/model.safetensors, "
                                                  "trained first if missing)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept a .pt/.pth checkpoint, read with torch.load(weights_only=True) (tensors only)")
    p.add_argument("--out", type=Path, default=Path("runs/explain"), help="output folder (default: runs/explain)")
    p.add_argument("--images", type=int, default=8, help="number of test images in the grid")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    check_int(args.images, "--images", low=1, high=64)
    check_int(args.seed, "--seed", low=0, high=2**32 - 1)
    check_writable_dir(args.out, "--out")  # before training, not after it
    data = load_data(args.dataset)
    torch.manual_seed(args.seed)
    model = build_model(args.arch, data.input_shape, data.num_classes)
    weights = args.weights or args.out / "model.safetensors"
    if weights.is_file():
        load_weights(model, weights, allow_pickle=args.allow_pickle)
        log.info("loaded %s", weights)
    elif args.weights is not None:
        raise XaisecError(f"weights file {weights} does not exist")
    else:
        log.info("training %s on %s (%s)", args.arch, args.dataset, data.summary())
        train_classifier(model, data.x_train, data.y_train, epochs=15, lr=3e-3, seed=args.seed)
        save_weights(model, weights)
    model.eval()
    acc = accuracy(model, data.x_test, data.y_test)
    x = data.x_test[: args.images]
    maps = explain(model, x, None, methods, options=_options(methods, data))
    preds = model(x).argmax(1)
    labels = [f"y={data.class_names[int(t)]} pred={data.class_names[int(p)]}" for t, p in zip(data.y_test[: args.images], preds)]
    png = explanation_grid(x, maps, args.out / "explanations.png", labels,
                           title=f"{args.arch} on {args.dataset}: test accuracy {acc:.3f}")
    atomic_write_json(args.out / "explain.json", {"dataset": args.dataset, "arch": args.arch, "methods": methods,
                                                  "test_accuracy": acc, "weights": str(weights)})
    print(f"test accuracy {acc:.3f}; explanations written to {png}")
    return 0


def _options(methods: list[str], data) -> dict[str, dict]:
    """GradientSHAP draws its baselines from training images (expected gradients)."""
    return {"gradshap": {"baselines": data.x_train[:64]}} if "gradshap" in methods else {}
