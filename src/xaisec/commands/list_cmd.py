"""``xaisec list [kind]``: registered datasets, models, explainers (and whatever else registers itself)."""
from __future__ import annotations

import argparse
import importlib

from ..errors import XaisecError

#: kind -> (module, registry attribute)
REGISTRIES = {
    "datasets": ("xaisec.data", "DATASETS"),
    "models": ("xaisec.models", "MODELS"),
    "explainers": ("xaisec.explainers", "EXPLAINERS"),
    "triggers": ("xaisec.triggers", "TRIGGERS"),
    "recipes": ("xaisec.backdoor.recipes", "RECIPES"),
    "targets": ("xaisec.target_maps", "FIXED_TARGETS"),
}


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list registered datasets, models, explainers, ...")
    p.add_argument("kind", nargs="?", help=f"one of: {', '.join(REGISTRIES)} (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kinds = list(REGISTRIES)
    if args.kind is not None:
        kind = args.kind.lower().rstrip("s") + "s"
        if kind not in REGISTRIES:
            raise XaisecError(f"unknown kind {args.kind!r}; choose one of {', '.join(REGISTRIES)}")
        kinds = [kind]
    for kind in kinds:
        module, attr = REGISTRIES[kind]
        registry = getattr(importlib.import_module(module), attr)
        print(f"{kind}: {', '.join(registry.names())}")
    return 0
