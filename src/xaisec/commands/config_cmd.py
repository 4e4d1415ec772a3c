"""``xaisec config show [CONFIG] [key=value ...]`` prints the resolved config (every default filled in);
``xaisec config reference`` prints the reference of every key of every experiment kind (markdown)."""
from __future__ import annotations

import argparse

import yaml

from ..config import dump_config, merge, parse_overrides, read_yaml, resolve_config
from ..config_reference import markdown, packaged_schemas
from ..runs import load_experiment
from .run_cmd import split_items


def add_parser(sub) -> None:
    p = sub.add_parser("config", help="show a resolved config, or the reference of every config key")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=type(p))
    show = verbs.add_parser("show", help="print CONFIG (a file or packaged name) with overrides and every default")
    show.add_argument("items", nargs="*", metavar="CONFIG|key=value")
    show.set_defaults(func=run_show)
    ref = verbs.add_parser("reference", help="print every key of every experiment kind with its type and default")
    ref.set_defaults(func=run_reference)


def run_show(args: argparse.Namespace) -> int:
    config, overrides = split_items(args.items)
    _, cfg = load_experiment(merge(read_yaml(resolve_config(config)), parse_overrides(overrides)))
    print(yaml.safe_dump(dump_config(cfg), sort_keys=False), end="")
    return 0


def run_reference(args: argparse.Namespace) -> int:
    print(markdown(packaged_schemas()), end="")
    return 0
