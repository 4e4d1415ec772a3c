"""``xaisec run [CONFIG] [key=value ...]``: the main job. Reads the YAML, picks the experiment kind from its
``experiment:`` key (default ``backdoor``), validates it with that kind's schema, then runs it in a new run
directory. ``xaisec run --resume RUN_DIR`` continues a killed run from its last checkpoint.
"""
from __future__ import annotations

import argparse
import logging
from importlib import resources
from pathlib import Path

from ..config import load_config, merge, parse_overrides, read_yaml
from ..errors import ConfigError
from ..experiments import DEFAULT_KIND, load_kinds
from ..rundir import RunDir, unique_dir

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run an experiment from a config (default: Fang's targeted attack on Grad-CAM)",
                       description="Run an experiment. CONFIG is a YAML file or the name of a packaged config "
                                   f"({', '.join(packaged_configs())}); key=value pairs override its entries, "
                                   "e.g. attack.epochs=5 attack.explainers=[vbp].")
    p.add_argument("items", nargs="*", metavar="CONFIG|key=value", help="config file or name, then overrides")
    p.add_argument("--out", type=Path, help="run directory (default: <out>/<name> from the config, made unique)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR")
    p.set_defaults(func=run)


def _config_dir():
    return resources.files("xaisec") / "configs"


def packaged_configs() -> list[str]:
    return sorted(p.name[:-5] for p in _config_dir().iterdir() if p.name.endswith(".yaml"))


def resolve_config(name: str | None) -> Path:
    """A config path: an existing file, else a packaged config by name (``fang_targeted``); None -> default."""
    if name is None:
        name = "default"
    path = Path(name)
    if path.is_file():
        return path
    packaged = _config_dir() / (name if name.endswith(".yaml") else f"{name}.yaml")
    if packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(f"config {name!r} is neither a file nor a packaged config; packaged: {', '.join(packaged_configs())}")


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


def load_experiment(path: Path, overrides: list[str]):
    """``(kind, validated config)`` for the YAML at ``path`` with ``overrides``."""
    data = merge(read_yaml(path), parse_overrides(overrides))
    kind_name = data.get("experiment", DEFAULT_KIND)
    kind = load_kinds().get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        raise ConfigError(f"experiment must be the name of an experiment kind, got {kind_name!r}")
    return kind, load_config(kind.schema, path, overrides)


def run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        if args.items or args.out:
            raise ConfigError("--resume continues a run with its own saved config; drop CONFIG, overrides and --out")
        rd = RunDir(args.resume)
        config_path = rd / "config.yaml"
        rd.read_config()  # clear error if this is not a run directory
        if rd.finished:
            print(f"{rd.path} already finished; report: {rd / 'report.html'}")
            return 0
        kind, cfg = load_experiment(config_path, [])
        run_dir = kind.runner(cfg, rd.path, resume=True)
    else:
        config, overrides = split_items(args.items)
        kind, cfg = load_experiment(resolve_config(config), overrides)
        run_dir = args.out or unique_dir(Path(getattr(cfg, "out", "runs")) / str(getattr(cfg, "name", None) or "run"))
        log.info("run directory: %s", run_dir)
        run_dir = kind.runner(cfg, run_dir, resume=False)
    report = Path(run_dir) / "report.html"
    print(f"finished: {run_dir}\nreport: {report}" if report.is_file() else f"finished: {run_dir}")
    return 0
