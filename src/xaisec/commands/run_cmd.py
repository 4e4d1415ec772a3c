"""``xaisec run [CONFIG] [key=value ...]``: the main job. Reads the YAML (a file or a packaged config's name),
picks the experiment kind from its ``experiment:`` key (default ``backdoor``), validates the whole config with
that kind's schema, then runs it through the one runner. ``xaisec run --resume RUN_DIR`` continues a killed run.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .. import distributed
from ..config import merge, packaged_configs, parse_overrides, read_yaml, resolve_config
from ..errors import ConfigError
from ..runs import load_experiment, load_run, run_experiment
from ..runs.rundir import RunDir

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run an experiment from a config (default: Fang's targeted attack on Grad-CAM)",
                       description="Run an experiment. CONFIG is a YAML file or the name of a packaged config "
                                   f"({', '.join(packaged_configs())}); key=value pairs override its entries, "
                                   "e.g. attack.epochs=5 attack.explainers=[vbp].")
    p.add_argument("items", nargs="*", metavar="CONFIG|key=value", help="config file or name, then overrides")
    p.add_argument("--out", type=Path, help="run directory (default: <out>/<name> from the config, made unique)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out (never a running one)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads for this run (config key `threads`)")
    p.set_defaults(func=run)


def split_items(items: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value ...]``: the first item without '=' is the config."""
    config, overrides = None, []
    for i, item in enumerate(items):
        if "=" in item:
            overrides.append(item)
        elif i == 0:
            config = item
        else:
            raise ConfigError(f"{item!r} is not a key=value override (the config, if any, comes first)")
    return config, overrides


def run(args: argparse.Namespace) -> int:
    distributed.init_from_env()  # under torchrun: join the ranks' process group (training is data-parallel)
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise ConfigError(f"--threads must be in [1, 1024], got {args.threads}")
    if args.resume is not None:
        if args.items or args.out or args.overwrite:
            raise ConfigError("--resume continues a run with its own saved config; drop CONFIG, overrides, --out "
                              "and --overwrite")
        rd = RunDir(args.resume)
        kind, cfg = load_run(rd.path)
        if rd.finished:
            print(f"{rd.path} already finished; report: {rd / 'report.html'}")
            return 0
        result = run_experiment(cfg, rd.path, resume=True)
    else:
        config, overrides = split_items(args.items)
        if args.threads is not None:
            overrides.append(f"threads={args.threads}")
        kind, cfg = load_experiment(merge(read_yaml(resolve_config(config)), parse_overrides(overrides)))
        result = run_experiment(cfg, args.out, overwrite=args.overwrite)
    if not distributed.is_main():
        return 0
    for line in result.headline:
        print(line)
    print(f"finished: {result.path}\nreport: {result.report}" if result.report.is_file() else f"finished: {result.path}")
    return 0
