"""``xaisec collect RUN_OR_SWEEP_DIRS... [--csv F] [--md F] [--figure F] [--aggregate KEYS | --group-by KEYS]
[--column LABEL=TEMPLATE ... | --layout NAME|FILE]``: many runs in one table (the config keys that differ between them,
every metric with its direction), optionally one row per group of runs (mean ± std over seeds, thread counts...)
and in a docs table's layout. Without an output flag the markdown table is printed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..runs.collect import aggregate, collect, markdown, write_outputs
from ..runs.collect_columns import packaged_layouts, parse_columns, read_layout


def _keys(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise argparse.ArgumentTypeError(f"expected KEY[,KEY...], got {text!r}")
    return keys


def add_parser(sub) -> None:
    p = sub.add_parser("collect", help="put many runs (or a sweep's trials) into one table and figure",
                       description="Collect run directories, sweep folders or folders of runs into a CSV (long "
                                   "layout: one line per run and metric), a markdown table (one row per run) and a "
                                   "figure of metrics against a swept key. Reads only config.yaml and metrics.json.")
    p.add_argument("paths", nargs="+", type=Path, metavar="RUN_OR_SWEEP_DIR")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write the long-layout CSV")
    p.add_argument("--md", type=Path, metavar="FILE", help="write the markdown table")
    p.add_argument("--figure", type=Path, metavar="FILE", help="write a PNG of metrics against a swept key")
    p.add_argument("--metrics", nargs="+", metavar="GLOB", help="metric keys to include, as globs (default: all; "
                                                                "the figure: the first four with a direction; with "
                                                                "--column/--layout: the CSV's and figure's only)")
    p.add_argument("--x", metavar="KEY", help="the figure's x axis (default: the first differing numeric key)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--aggregate", type=_keys, metavar="KEY[,KEY...]",
                       help="fold runs that differ only in these config keys (e.g. seed,threads) into one row: "
                            "each metric's mean ± sample std over the runs, and n")
    group.add_argument("--group-by", type=_keys, metavar="KEY[,KEY...]",
                       help="one row per value of these config keys, every other key folded (mean ± std, n)")
    layout = p.add_mutually_exclusive_group()
    layout.add_argument("--column", action="append", metavar="LABEL=TEMPLATE",
                        help="a markdown column in a docs table's layout, e.g. 'ASR %%={attacked/asr|pct}' "
                             "(repeatable; placeholders {METRIC}, {attacked/*/fsr}, {config:KEY}, {context:KEY}, "
                             "{min:METRIC} / {max:METRIC} (a group's worst and best run), each with an optional "
                             "|pct or |FORMAT such as |.3f)")
    layout.add_argument("--layout", metavar="NAME|FILE",
                        help="a YAML file holding the columns, `columns: {LABEL: TEMPLATE, ...}`, or a packaged "
                             f"layout of the docs' tables ({', '.join(packaged_layouts())})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    columns = read_layout(args.layout) if args.layout else parse_columns(args.column or [])
    table = collect(args.paths)
    if args.aggregate or args.group_by:
        table = aggregate(table, over=args.aggregate or (), by=args.group_by or ())
    written = write_outputs(table, csv_path=args.csv, md_path=args.md, figure_path=args.figure, metrics=args.metrics,
                            x=args.x, columns=columns)
    if not written:
        print(markdown(table, args.metrics, columns), end="")
    for path in written:
        print(f"written: {path}")
    return 0
