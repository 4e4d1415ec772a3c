"""``xaisec report RUN_DIR``: rebuild ``report.html`` (and its figures) of any kind of run from its run
directory alone."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..report.screenshot import screenshot
from ..runs import build_report


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild report.html of a run directory from its artifacts")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--screenshot", nargs="?", const=True, metavar="PNG",
                   help="also render the report in headless Chromium to PNG (default: RUN_DIR/report.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    html = build_report(args.run_dir)
    print(f"report: {html}")
    if args.screenshot:
        png = Path(args.run_dir) / "report.png" if args.screenshot is True else Path(args.screenshot)
        print(f"screenshot: {screenshot(html, png)}")
    return 0
