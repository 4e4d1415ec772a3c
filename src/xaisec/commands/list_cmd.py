"""``xaisec list [kind]``: what is registered, walked from the registry of registries (datasets, models,
explainers, triggers, recipes, targets, attacks, defenses, audit checks, experiment kinds, ...)."""
from __future__ import annotations

import argparse
import difflib

from ..errors import XaisecError
from ..registry import all_registries


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list registered datasets, models, explainers, attacks, defenses, ...")
    p.add_argument("kind", nargs="?", help="one registry, e.g. explainers or attacks (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    registries = all_registries()
    kinds = sorted(registries)
    if args.kind is not None:
        kind = args.kind.lower().replace("-", "_").replace(" ", "_")
        kind = kind if kind in registries else kind.rstrip("s") + "s"
        if kind not in registries:
            close = difflib.get_close_matches(args.kind, list(registries), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise XaisecError(f"unknown kind {args.kind!r}{hint}; choose one of {', '.join(registries)}")
        kinds = [kind]
    for kind in kinds:
        print(f"{kind}: {', '.join(registries[kind].names())}")
    return 0
