"""The sweep spec: what a sweep explores (``sweep.yaml``), parsed from ``--grid`` / ``--search`` and the config's
``sweep:`` section, and checked before any trial runs (every grid point and range end builds with the kind's
schema)."""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import merge, parse_yaml
from ..errors import ConfigError, XaisecError
from ..io import atomic_write_text
from .runner import load_experiment

SPEC_FILE = "sweep.yaml"
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
#: grids larger than this are checked value by value instead of point by point
_CHECK_ALL_POINTS = 512


@dataclass
class SweepSpec:
    """What a sweep explores. ``base``: the run config (a mapping, validated with its kind's schema); ``grid``:
    dotted key -> values; ``search``: dotted key -> ``uniform:LO:HI`` / ``loguniform:LO:HI`` / ``int:LO:HI`` /
    ``choice:A,B,...``; ``trials``: how many (default: the grid's size); ``objective``: the metric key optimised
    in its record's direction; ``holdout``: Noppel et al.'s selection on the test halves; ``storage``: an
    SQLAlchemy URL (default: SQLite in the sweep folder); ``track``: TensorBoard logs per trial; ``slurm``:
    submitit executor parameters for ``--launcher slurm``."""

    base: dict
    grid: dict[str, list] = field(default_factory=dict)
    search: dict[str, str] = field(default_factory=dict)
    trials: int | None = None
    objective: str = "attacked/noppel_score"
    holdout: bool = False
    storage: str | None = None
    track: bool = False
    slurm: dict = field(default_factory=dict)

    #: keys of the ``sweep:`` section of a config file
    KEYS = ("grid", "search", "trials", "objective", "holdout", "storage", "track", "slurm")

    @property
    def n_trials(self) -> int:
        if self.trials is not None:
            return self.trials
        return math.prod(len(v) for v in self.grid.values())

    def identity(self) -> dict:
        """What must not change when a sweep is continued."""
        return {k: v for k, v in asdict(self).items() if k not in ("slurm", "track")}

    def storage_url(self, sweep_dir: Path) -> str:
        return self.storage or f"sqlite:///{Path(sweep_dir).resolve() / 'study.db'}"

    def write(self, sweep_dir: Path) -> None:
        atomic_write_text(Path(sweep_dir) / SPEC_FILE, yaml.safe_dump(asdict(self), sort_keys=False))

    @classmethod
    def read(cls, sweep_dir: str | Path) -> "SweepSpec":
        path = Path(sweep_dir) / SPEC_FILE
        if not path.is_file():
            raise ConfigError(f"{sweep_dir} is not a sweep folder (no {SPEC_FILE}); give the folder `xaisec sweep` "
                              "printed")
        data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
        if not isinstance(data, dict) or not isinstance(data.get("base"), dict):
            raise ConfigError(f"{path} is damaged: no `base:` config mapping")
        unknown = sorted(set(data) - {"base", *cls.KEYS})
        if unknown:
            raise ConfigError(f"{path} has unknown keys {unknown}")
        return cls(**data)


def split_sweep_section(data: dict) -> tuple[dict, dict]:
    """``(run config, sweep section)``: the ``sweep:`` mapping of a config file is taken out before the run
    config is validated with its kind's schema."""
    data = dict(data)
    section = data.pop("sweep", None) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"sweep: must be a mapping of {', '.join(SweepSpec.KEYS)}, got {section!r}")
    unknown = sorted(set(section) - set(SweepSpec.KEYS))
    if unknown:
        raise ConfigError(f"sweep: unknown keys {unknown}; accepted: {', '.join(SweepSpec.KEYS)}")
    return data, section


def _split_top_level(text: str) -> list[str]:
    """Split ``a,[b,c],d`` at commas outside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def _key_value(item: str, flag: str) -> tuple[str, str]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")) or not raw.strip():
        raise ConfigError(f"{flag} {item!r} must look like key=VALUES (e.g. {flag} attack.lam=0.85,0.9)")
    return key, raw.strip()


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["attack.lam=0.85,0.9"]`` -> ``{"attack.lam": [0.85, 0.9]}`` (each value parsed as YAML)."""
    grid: dict[str, list] = {}
    for item in items:
        key, raw = _key_value(item, "--grid")
        grid[key] = [parse_yaml(v.strip(), f"--grid {item!r}") for v in _split_top_level(raw)]
    return grid


def parse_search(items: list[str]) -> dict[str, str]:
    """``["attack.lr=loguniform:2e-4:2.5e-3"]`` -> ``{"attack.lr": "loguniform:2e-4:2.5e-3"}`` (checked)."""
    search = {}
    for item in items:
        key, raw = _key_value(item, "--search")
        parse_distribution(key, raw)
        search[key] = raw
    return search


def parse_distribution(key: str, spec: Any) -> tuple[str, tuple]:
    """``(kind, arguments)`` of a search range: ``("loguniform", (lo, hi))``, ``("choice", (values...))``."""
    kind, _, rest = str(spec).partition(":")
    if kind not in DISTRIBUTIONS or not rest:
        raise ConfigError(f"search range of {key} must be one of {', '.join(f'{d}:...' for d in DISTRIBUTIONS)} "
                          f"(e.g. loguniform:2e-4:2.5e-3 or choice:mse,dssim), got {spec!r}")
    if kind == "choice":
        values = tuple(parse_yaml(v.strip(), f"search {key}") for v in _split_top_level(rest))
        _check_scalars(key, values)
        return kind, values
    bounds = rest.split(":")
    try:
        lo, hi = (int(b) if kind == "int" else float(b) for b in bounds)
    except ValueError:
        raise ConfigError(f"search range of {key}: {kind} needs two {'integers' if kind == 'int' else 'numbers'} "
                          f"LO:HI, got {rest!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi) or (kind == "loguniform" and lo <= 0):
        raise ConfigError(f"search range of {key}: need finite LO < HI{' and LO > 0' if kind == 'loguniform' else ''}"
                          f", got {lo}:{hi}")
    return kind, (lo, hi)




def range_start(raw: str) -> Any:
    """The low end of a search range (the first value of a ``choice``)."""
    kind, args = parse_distribution("", raw)
    return args[0]


def _check_scalars(key: str, values: Any) -> None:
    if not values:
        raise ConfigError(f"sweep key {key} needs at least one value")
    for v in values:
        if not (v is None or isinstance(v, (str, int, float, bool))) or (isinstance(v, float) and not math.isfinite(v)):
            raise ConfigError(f"sweep key {key}: value {v!r} is not a finite number, string, boolean or null "
                              "(Optuna stores only those)")


def nested(params: dict[str, Any]) -> dict:
    """``{"attack.lam": 0.9}`` -> ``{"attack": {"lam": 0.9}}``."""
    out: dict = {}
    for key, value in params.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _has_key(config: Any, key: str) -> bool:
    node = config
    for part in key.split("."):
        if not hasattr(node, part):
            return False
        node = getattr(node, part)
    return True


def make_spec(data: dict, *, grid: dict | None = None, search: dict | None = None, **options: Any) -> SweepSpec:
    """A :class:`SweepSpec` from a merged config mapping (its ``sweep:`` section taken out) and command-line
    choices, which win over the section's."""
    base, section = split_sweep_section(data)
    section = {**section, **{k: v for k, v in options.items() if v is not None}}
    if grid:
        section["grid"] = {**(section.get("grid") or {}), **grid}
    if search:
        section["search"] = {**(section.get("search") or {}), **search}
    for key, kind in (("grid", dict), ("search", dict), ("slurm", dict)):
        if not isinstance(section.get(key, {}), kind):
            raise ConfigError(f"sweep.{key} must be a mapping, got {section[key]!r}")
    for key, values in (section.get("grid") or {}).items():
        if not isinstance(values, list):
            raise ConfigError(f"sweep.grid.{key} must be a list of values, got {values!r}")
    return SweepSpec(base=base, **section)


def check_spec(spec: SweepSpec) -> None:
    """Everything that can be checked before any trial: each grid point and range end builds with the kind's
    schema, the objective, the trial count. Raises :class:`ConfigError`."""
    kind, cfg = load_experiment(spec.base)
    if not spec.grid and not spec.search:
        raise ConfigError("a sweep needs --grid key=v1,v2 and/or --search key=RANGE (or sweep.grid / sweep.search "
                          "in the config)")
    overlap = sorted(set(spec.grid) & set(spec.search))
    if overlap:
        raise ConfigError(f"{overlap} are in both the grid and the search ranges; give each key once")
    for key, values in spec.grid.items():
        _check_scalars(key, values)
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"--grid {key} repeats a value: {values}")
    if spec.search and spec.trials is None:
        raise ConfigError("--search needs --trials N (how many trials TPE runs)")
    if spec.trials is not None and not (isinstance(spec.trials, int) and 1 <= spec.trials <= 100_000):
        raise ConfigError(f"--trials must be an integer in [1, 100000], got {spec.trials!r}")
    if not isinstance(spec.objective, str) or not spec.objective:
        raise ConfigError(f"objective must be a metric key such as attacked/noppel_score, got {spec.objective!r}")
    if spec.holdout and not _has_key(cfg, "eval.split"):
        raise ConfigError(f"holdout needs an eval.split key, which the {kind.name} experiment does not have")
    for key in [*spec.grid, *spec.search]:
        if key.split(".")[0] in ("name", "out", "experiment"):
            raise ConfigError(f"{key} cannot be swept (each trial's name and folder are set by the sweep)")
    points = [dict(zip(spec.grid, combo)) for combo in itertools.product(*spec.grid.values())]
    if len(points) > _CHECK_ALL_POINTS:  # check each value on its own
        points = [{key: v} for key, values in spec.grid.items() for v in values]
    for key, raw in spec.search.items():
        kind_, args = parse_distribution(key, raw)
        points += [{key: v} for v in args]
    for params in points:
        try:
            load_experiment(merge(spec.base, nested(params)))
        except XaisecError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ConfigError(f"sweep point {shown}: {exc}") from None



__all__ = ["DISTRIBUTIONS", "SPEC_FILE", "SweepSpec", "check_spec", "make_spec", "nested", "parse_distribution",
           "parse_grid", "parse_search", "range_start", "split_sweep_section"]
