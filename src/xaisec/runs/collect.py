"""Many runs in one table: the config keys that differ between them and every metric with its direction.

Reads only each run directory's ``config.yaml`` and ``metrics.json`` (through :func:`read_metrics`); runs that
are unfinished or damaged become rows saying so. Outputs: a CSV in the long layout (one line per run and metric:
``run, state, <differing keys>, metric, value, std, direction, note``, ready for a pivot), a markdown table in the
wide layout (one row per run, one column per metric, its direction in the header) and a figure of metrics
against a swept key.
"""
from __future__ import annotations

import csv
import fnmatch
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, XaisecError
from ..io import atomic_write_text
from ..records import Metric
from .rundir import RunDir
from .runner import read_metrics

log = logging.getLogger(__name__)

#: keys that name or place a run rather than configure it
_IGNORED = ("name", "out", "reference.weights")
ARROWS = {"higher": "↑", "lower": "↓", "none": ""}


@dataclass
class RunRow:
    """One run: its folder, state (``finished``, ``failed``, ``interrupted``, ``running``, ``damaged``...), flat
    config (dotted keys), metric records, and a note for runs without metrics."""

    path: Path
    state: str
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Metric] = field(default_factory=dict)
    note: str = ""


@dataclass
class RunTable:
    """Rows plus the config keys that differ between them and the metric keys (with directions) they report."""

    rows: list[RunRow]
    keys: list[str]
    directions: dict[str, str]

    def select(self, patterns: Sequence[str] | None) -> list[str]:
        """Metric keys matching any glob in ``patterns`` (all of them for None); unmatched patterns raise."""
        if not patterns:
            return list(self.directions)
        chosen = [k for k in self.directions if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
        if not chosen:
            raise ConfigError(f"--metrics {list(patterns)} matches none of the runs' metrics "
                              f"({', '.join(list(self.directions)[:12])}...)")
        return chosen


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories in ``paths``: a run directory itself, a sweep folder (its ``trials/`` and the chosen
    trial's re-evaluation) or a folder whose sub-folders are runs."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ConfigError(f"{p} is not a folder; give run directories or sweep folders")
        if RunDir(p).holds_run():
            found.append(p)
            continue
        children = sorted(c for c in (p / "trials").iterdir() if c.is_dir()) if (p / "trials").is_dir() else []
        children += sorted(c for c in p.iterdir() if c.is_dir() and c.name != "trials")
        runs = [c for c in children if RunDir(c).holds_run()]
        if not runs:
            raise ConfigError(f"{p} holds no run directories (no config.yaml or status.json in it or its sub-folders)")
        found += runs
    return list(dict.fromkeys(found))


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"attack": {"lam": 0.9}}`` -> ``{"attack.lam": 0.9}`` (lists stay values)."""
    if not isinstance(data, dict) or (prefix and not data):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def read_row(path: Path) -> RunRow:
    """One run's row; a damaged or unfinished run gives a row with its state and a note, never an exception."""
    rd = RunDir(path)
    try:
        config = flatten(rd.read_config())
    except XaisecError as exc:
        return RunRow(path, "damaged", note=str(exc))
    state = rd.state()
    if state != "finished":
        return RunRow(path, state, config, note=str(rd.status().get("error", "")))
    try:
        metrics, _ = read_metrics(path)
    except XaisecError as exc:
        return RunRow(path, "damaged", config, note=str(exc))
    return RunRow(path, state, config, metrics)


def _same(values: list[Any]) -> bool:
    return len({json.dumps(v, sort_keys=True, default=str) for v in values}) <= 1


def collect(paths: Sequence[str | Path]) -> RunTable:
    """The :class:`RunTable` of every run found in ``paths``."""
    rows = [read_row(p) for p in find_runs(paths)]
    configured = [r for r in rows if r.config]
    all_keys = list(dict.fromkeys(k for r in configured for k in r.config))
    keys = [k for k in all_keys if k not in _IGNORED and not _same([r.config.get(k) for r in configured])]
    directions: dict[str, str] = {}
    for r in rows:
        for k, m in r.metrics.items():
            directions.setdefault(k, m.direction)
    return RunTable(rows, keys, directions)


def _label(row: RunRow, roots: list[Path]) -> str:
    for root in roots:
        try:
            return str(row.path.resolve().relative_to(root))
        except ValueError:
            continue
    return str(row.path)


def _roots(table: RunTable) -> list[Path]:
    """Rows are labelled relative to the deepest folder holding every run."""
    if len(table.rows) == 1:
        return [table.rows[0].path.parent]
    return [Path(os.path.commonpath([str(r.path.resolve()) for r in table.rows]))]


def to_csv(table: RunTable, metrics: Sequence[str] | None = None) -> str:
    """The long layout: one line per run and metric (one line with an empty metric for runs without metrics)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", "state", *table.keys, "metric", "value", "std", "direction", "note"])
    chosen, roots = table.select(metrics), _roots(table)
    for row in table.rows:
        head = [_label(row, roots), row.state, *(_cell(row.config.get(k)) for k in table.keys)]
        present = [k for k in chosen if k in row.metrics]
        if not present:
            writer.writerow([*head, "", "", "", "", row.note])
        for k in present:
            m = row.metrics[k]
            writer.writerow([*head, k, _cell(m.value), _cell(m.std), m.direction, ""])
    return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def to_markdown(table: RunTable, metrics: Sequence[str] | None = None) -> str:
    """The wide layout: one row per run, the differing config keys, then one column per metric (↑ higher / ↓
    lower is better for the attacker); runs without metrics show their state and note."""
    chosen, roots = table.select(metrics), _roots(table)
    header = ["run", "state", *table.keys, *(f"{k} {ARROWS[table.directions[k]]}".strip() for k in chosen)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        cells = [_label(row, roots), row.state + (f": {row.note[:80]}" if row.note else ""),
                 *(_cell(row.config.get(k)) for k in table.keys)]
        for k in chosen:
            m = row.metrics.get(k)
            cells.append("–" if m is None or m.value is None else
                         f"{m.value:.4g}" + (f" ± {m.std:.2g}" if m.std is not None else ""))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def figure(table: RunTable, path: str | Path, metrics: Sequence[str] | None = None, x: str | None = None) -> Path:
    """Each chosen metric (default: the first four with a direction) against the swept key ``x`` (default: the
    first differing numeric key), one line per combination of the other differing keys; finished runs only."""
    from ..report.figures import save_figure
    from ..report.panels import plt

    done = [r for r in table.rows if r.metrics]
    if not done:
        raise ConfigError("no finished run to plot")
    keys = [k for k in table.keys if all(k in r.config for r in done)]
    if x is None:
        x = next((k for k in keys if _numeric([r.config[k] for r in done])), keys[0] if keys else None)
    if x is None:
        raise ConfigError("the runs do not differ in any config key, so there is nothing to plot against")
    if x not in keys:
        raise ConfigError(f"--x {x!r} is not a key that differs between the runs; those are: {', '.join(keys)}")
    chosen = table.select(metrics) if metrics else [k for k, d in table.directions.items() if d != "none"][:4]
    numeric_x = _numeric([r.config[x] for r in done])
    others = [k for k in keys if k != x]
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.6 * len(chosen), 3.0), squeeze=False)
    for ax, key in zip(axes[0], chosen):
        groups: dict[str, list[RunRow]] = {}
        for r in done:
            groups.setdefault(", ".join(f"{k.rsplit('.', 1)[-1]}={_cell(r.config[k])}" for k in others), []).append(r)
        for label, members in sorted(groups.items()):
            pts = sorted((r.config[x] if numeric_x else str(r.config[x]), r.metrics[key].value) for r in members
                         if key in r.metrics and r.metrics[key].value is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label or None)
        if numeric_x and all(r.config[x] > 0 for r in done) and max(r.config[x] for r in done) > 20 * min(
                r.config[x] for r in done):
            ax.set_xscale("log")
        ax.set_title(f"{key} {ARROWS[table.directions[key]]}".strip(), fontsize=8)
        ax.set_xlabel(x, fontsize=8)
        if others and len(groups) > 1:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def write_outputs(table: RunTable, *, csv_path: str | Path | None = None, md_path: str | Path | None = None,
                  figure_path: str | Path | None = None, metrics: Sequence[str] | None = None,
                  x: str | None = None) -> list[Path]:
    """Write the requested files; returns their paths."""
    written = []
    if csv_path is not None:
        written.append(atomic_write_text(csv_path, to_csv(table, metrics)))
    if md_path is not None:
        written.append(atomic_write_text(md_path, to_markdown(table, metrics)))
    if figure_path is not None:
        written.append(figure(table, figure_path, metrics, x))
    return written


__all__ = ["RunRow", "RunTable", "collect", "figure", "find_runs", "flatten", "read_row", "to_csv", "to_markdown",
           "write_outputs"]
