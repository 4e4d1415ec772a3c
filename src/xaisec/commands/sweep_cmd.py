"""``xaisec sweep CONFIG [key=value ...] --grid key=v1,v2 | --search key=RANGE --trials N``: a hyperparameter
sweep on Optuna, each trial an ordinary run directory. ``xaisec sweep --resume SWEEP_DIR`` continues a killed
sweep. The config's ``sweep:`` section (grid, search, trials, objective, holdout, storage, track, slurm) is read
and taken out before the run config is validated; command-line flags win over it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import merge, packaged_configs, parse_overrides, read_yaml, resolve_config
from ..errors import ConfigError
from ..runs.runner import load_experiment
from ..runs.sweep import LAUNCHERS, make_spec, parse_grid, parse_search, resume_sweep, run_sweep, split_sweep_section
from .run_cmd import split_items


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="a hyperparameter sweep (Optuna grid or TPE search), one run per trial",
                       description="Run a hyperparameter sweep. CONFIG is a YAML file or a packaged config "
                                   f"({', '.join(c for c in packaged_configs() if 'grid' in c) or 'e.g. noppel_grid'} "
                                   "hold a sweep: section); key=value pairs override its entries.")
    p.add_argument("items", nargs="*", metavar="CONFIG|key=value", help="config file or name, then overrides")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="grid values of a config key (repeat for more keys; Optuna's GridSampler)")
    p.add_argument("--search", action="append", default=[], metavar="KEY=RANGE",
                   help="a search range for TPE: uniform:LO:HI, loguniform:LO:HI, int:LO:HI or choice:A,B")
    p.add_argument("--trials", type=int, metavar="N", help="number of trials (default: the grid's size)")
    p.add_argument("--objective", metavar="METRIC", help="metric key to optimise, in its record's direction "
                                                           "(default: attacked/noppel_score)")
    p.add_argument("--holdout", action="store_true", default=None,
                   help="tune on the first test half, report the chosen trial on the second (Noppel et al.)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="parallel workers (processes or jobs)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="process",
                   help="process: local processes; submitit-local: submitit's local executor; slurm: a Slurm job "
                        "array through submitit")
    p.add_argument("--storage", metavar="URL", help="SQLAlchemy URL of the Optuna study (default: SQLite in the "
                                                     "sweep folder)")
    p.add_argument("--track", action="store_true", default=None, help="TensorBoard logs per trial")
    p.add_argument("--out", type=Path, help="sweep folder (default: <out>/<name>-sweep from the config)")
    p.add_argument("--resume", type=Path, metavar="SWEEP_DIR", help="continue the sweep in SWEEP_DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        if args.items or args.grid or args.search or args.out or args.storage or args.trials or args.objective:
            raise ConfigError("--resume continues a sweep with its own saved settings; only --workers and "
                              "--launcher may be given with it")
        result = resume_sweep(args.resume, launcher=args.launcher, workers=args.workers)
    else:
        config, overrides = split_items(args.items)
        data = merge(read_yaml(resolve_config(config)), parse_overrides(overrides))
        spec = make_spec(data, grid=parse_grid(args.grid), search=parse_search(args.search), trials=args.trials,
                         objective=args.objective, holdout=args.holdout, storage=args.storage, track=args.track)
        out = args.out
        if out is None:
            _, cfg = load_experiment(split_sweep_section(data)[0])
            out = Path(cfg.out) / f"{cfg.name}-sweep"
        result = run_sweep(spec, out, launcher=args.launcher, workers=args.workers)
    for line in result.lines():
        print(line)
    return 0
