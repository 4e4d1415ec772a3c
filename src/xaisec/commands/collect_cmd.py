"""``xaisec collect RUN_OR_SWEEP_DIRS... [--csv F] [--md F] [--figure F]``: many runs in one table (the config keys
that differ between them, every metric with its direction). Without an output flag the markdown table is printed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..runs.collect import collect, to_markdown, write_outputs


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
                                                                "the figure: the first four with a direction)")
    p.add_argument("--x", metavar="KEY", help="the figure's x axis (default: the first differing numeric key)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    table = collect(args.paths)
    written = write_outputs(table, csv_path=args.csv, md_path=args.md, figure_path=args.figure, metrics=args.metrics,
                            x=args.x)
    if not written:
        print(to_markdown(table, args.metrics), end="")
    for path in written:
        print(f"written: {path}")
    return 0
