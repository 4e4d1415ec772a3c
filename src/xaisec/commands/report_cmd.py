"""``xaisec report RUN_DIR``: rebuild ``report.html`` (and its figures) from a run directory's artifacts alone."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import read_yaml
from ..errors import ConfigError
from ..experiments import DEFAULT_KIND, load_kinds
from ..report.screenshot import screenshot
from ..rundir import RunDir


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild report.html of a run directory from its artifacts")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--screenshot", nargs="?", const=True, metavar="PNG",
                   help="also render the report in headless Chromium to PNG (default: RUN_DIR/report.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rd = RunDir(args.run_dir)
    rd.read_config()  # clear error if this is not a run directory
    kind_name = read_yaml(rd / "config.yaml").get("experiment", DEFAULT_KIND)
    kind = load_kinds().get(str(kind_name))
    if kind.report is None:
        raise ConfigError(f"experiment kind {kind_name!r} has no report builder")
    html = kind.report(rd.path)
    print(f"report: {html}")
    if args.screenshot:
        png = rd.path / "report.png" if args.screenshot is True else Path(args.screenshot)
        print(f"screenshot: {screenshot(html, png)}")
    return 0
