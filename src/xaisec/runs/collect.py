"""Many runs in one table: the config keys that differ between them and every metric with its direction.

Reads only each run directory's ``config.yaml`` and ``metrics.json`` (through :func:`read_metrics`); runs that
are unfinished or damaged become rows saying so. Outputs: a CSV in the long layout (one line per run and metric:
``run, state, <differing keys>, metric, value, std, direction, note``, ready for a pivot), a markdown table in the
wide layout (one row per run, one column per metric, its direction in the header) and a figure of metrics
against a swept key.

:func:`aggregate` folds runs that differ only in chosen keys (seeds, thread counts) into one row per group:
each metric's mean, its sample standard deviation over the runs, their number ``n`` and the lowest and highest
value. Docs tables in the
papers' layout (chosen columns, formatted cells) come from :mod:`xaisec.runs.collect_columns`.
"""
from __future__ import annotations

import csv
import fnmatch
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, XaisecError
from ..io import atomic_write_text
from ..records import Metric
from .rundir import RunDir
from .runner import read_metrics, with_defaults

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
    context: dict[str, Any] = field(default_factory=dict)
    #: a group of runs (:func:`aggregate`): its label, members and, per metric, how many runs report it and the
    #: lowest and highest of their values
    label: str | None = None
    members: list[Path] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    def extreme(self, key: str, which: str) -> float | None:
        """The lowest (``which="min"``) or highest (``"max"``) value of metric ``key`` over a group's runs; a
        single run's own value."""
        if key in self.ranges:
            return self.ranges[key][which == "max"]
        m = self.metrics.get(key)
        return None if m is None else m.value


@dataclass
class RunTable:
    """Rows plus the config keys that differ between them and the metric keys (with directions) they report."""

    rows: list[RunRow]
    keys: list[str]
    directions: dict[str, str]
    #: the config keys folded by :func:`aggregate` (empty: one row per run)
    aggregated: list[str] = field(default_factory=list)

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
        config = flatten(with_defaults(rd.read_config()))  # runs from before a key existed compare at its default
    except XaisecError as exc:
        return RunRow(path, "damaged", note=str(exc))
    state = rd.state()
    if state != "finished":
        return RunRow(path, state, config, note=str(rd.status().get("error", "")))
    try:
        metrics, context = read_metrics(path)
    except XaisecError as exc:
        return RunRow(path, "damaged", config, note=str(exc))
    return RunRow(path, state, config, metrics, context=context)


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


def aggregate(table: RunTable, over: Sequence[str] = (), by: Sequence[str] = ()) -> RunTable:
    """One row per group of runs: the runs that differ only in the config keys ``over`` (e.g. ``seed``,
    ``threads``), or, with ``by``, the runs that agree on the keys ``by`` (every other key is folded). Each metric
    of a group row is the mean over its finished runs, with the sample standard deviation over them (n - 1; none
    for a single run) as ``std`` and their number in ``counts``; a run's own ``std`` (a spread over images) is not
    carried over. Unfinished runs stay in their group's state and note, never in its numbers. The row is labelled
    by the runs' shared ``name`` (else the common start of their folder names)."""
    if bool(over) == bool(by):
        raise ConfigError("aggregate runs either --aggregate KEY,... (the keys to fold) or --group-by KEY,... (the "
                          "keys to keep), one of the two")
    known = list(dict.fromkeys(k for r in table.rows for k in r.config))
    unknown = [k for k in (*over, *by) if k not in known]
    if unknown:
        raise ConfigError(f"{unknown[0]!r} is not a config key of these runs; keys that differ between them: "
                          f"{', '.join(table.keys) or 'none'} (dotted, e.g. attack.lam; seed and threads are "
                          "top-level)")
    keys = list(by) if by else [k for k in table.keys if k not in over]
    folded = [k for k in table.keys if k not in keys] if by else list(over)
    roots = label_roots(table)
    groups: dict[str, list[RunRow]] = {}
    for row in table.rows:
        groups.setdefault(json.dumps([row.config.get(k) for k in keys], sort_keys=True, default=str), []).append(row)
    return RunTable([_group_row(members, roots) for members in groups.values()], keys, table.directions, folded)


def _group_row(members: list[RunRow], roots: list[Path]) -> RunRow:
    done = [r for r in members if r.metrics]
    metrics, counts, ranges = {}, {}, {}
    for key in dict.fromkeys(k for r in done for k in r.metrics):
        found = [r.metrics[key] for r in done if key in r.metrics]
        values = [m.value for m in found if m.value is not None]
        mean = sum(values) / len(values) if values else None
        std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None)
        metrics[key] = Metric(mean, found[0].direction, found[0].description, std)
        counts[key] = len(values)
        if values:
            ranges[key] = (min(values), max(values))
    states: dict[str, int] = {}
    for r in members:
        states[r.state] = states.get(r.state, 0) + 1
    state = ", ".join(f"{n} {s}" for s, n in states.items())
    notes = "; ".join(f"{row_label(r, roots)}: {r.note}" for r in members if r.note)
    labels = [row_label(r, roots) for r in members]
    names = {r.config.get("name") for r in members}
    label = (names.pop() if len(names) == 1 and None not in names
             else os.path.commonprefix(labels).rstrip("-_./ ") or labels[0])
    first = done[0] if done else members[0]
    shared = {k: v for k, v in first.config.items() if _same([r.config.get(k) for r in members])}
    return RunRow(first.path, state, shared, metrics, notes, _group_context([r.context for r in done]),
                  label=label, members=[r.path for r in members], counts=counts, ranges=ranges)


def _group_context(contexts: list[dict[str, Any]]) -> dict[str, Any]:
    """The context fields the runs share; numbers that differ (attack epochs under early stopping) as ``min–max``."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for c in contexts for k in c):
        values = [c.get(key) for c in contexts]
        if _same(values):
            out[key] = values[0]
        elif _numeric(values):
            out[key] = f"{min(values):g}–{max(values):g}"
    return out


def row_label(row: RunRow, roots: list[Path]) -> str:
    if row.label is not None:
        return row.label
    for root in roots:
        try:
            return str(row.path.resolve().relative_to(root))
        except ValueError:
            continue
    return str(row.path)


def label_roots(table: RunTable) -> list[Path]:
    """Rows are labelled relative to the deepest folder holding every run."""
    if len(table.rows) == 1:
        return [table.rows[0].path.parent]
    return [Path(os.path.commonpath([str(r.path.resolve()) for r in table.rows]))]


def to_csv(table: RunTable, metrics: Sequence[str] | None = None) -> str:
    """The long layout: one line per run and metric (one line with an empty metric for runs without metrics)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    n = ["n"] if table.aggregated else []
    writer.writerow(["run", "state", *table.keys, "metric", "value", "std", *n, "direction", "note"])
    chosen, roots = table.select(metrics), label_roots(table)
    for row in table.rows:
        head = [row_label(row, roots), row.state, *(_cell(row.config.get(k)) for k in table.keys)]
        present = [k for k in chosen if k in row.metrics]
        if not present:
            writer.writerow([*head, "", "", "", *([""] if n else []), "", row.note])
        for k in present:
            m = row.metrics[k]
            writer.writerow([*head, k, _cell(m.value), _cell(m.std), *([row.counts.get(k, 0)] if n else []),
                             m.direction, row.note if table.aggregated else ""])
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
    chosen, roots = table.select(metrics), label_roots(table)
    n = ["n"] if table.aggregated else []
    header = ["run", "state", *table.keys, *n, *(f"{k} {ARROWS[table.directions[k]]}".strip() for k in chosen)]
    lines = [markdown_row(header), "|" + "---|" * len(header)]
    for row in table.rows:
        cells = [row_label(row, roots), row.state + (f": {row.note[:80]}" if row.note else ""),
                 *(_cell(row.config.get(k)) for k in table.keys), *([str(len(row.members))] if n else [])]
        for k in chosen:
            m = row.metrics.get(k)
            cells.append("–" if m is None or m.value is None else
                         f"{m.value:.4g}" + (f" ± {m.std:.2g}" if m.std is not None else "")
                         + _partial(row, k))
        lines.append(markdown_row(cells))
    return "\n".join(lines) + "\n"


def markdown(table: RunTable, metrics: Sequence[str] | None = None, columns: dict[str, str] | None = None) -> str:
    """:func:`to_markdown`, or with ``columns`` the table in the papers' layout."""
    if columns:
        from .collect_columns import to_markdown_columns

        return to_markdown_columns(table, columns)
    return to_markdown(table, metrics)


def _partial(row: RunRow, key: str) -> str:
    """`` (n=2)`` after a group's value that fewer runs report than the group holds."""
    return f" (n={row.counts[key]})" if row.members and row.counts.get(key, len(row.members)) < len(row.members) else ""


def markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


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
                  x: str | None = None, columns: dict[str, str] | None = None) -> list[Path]:
    """Write the requested files; returns their paths. ``columns`` (label: template) gives the markdown table the
    papers' layout (:mod:`xaisec.runs.collect_columns`) instead of one column per metric."""
    written = []
    if csv_path is not None:
        written.append(atomic_write_text(csv_path, to_csv(table, metrics)))
    if md_path is not None:
        written.append(atomic_write_text(md_path, markdown(table, metrics, columns)))
    if figure_path is not None:
        written.append(figure(table, figure_path, metrics, x))
    return written


__all__ = ["RunRow", "RunTable", "aggregate", "collect", "figure", "find_runs", "flatten", "label_roots", "markdown",
           "markdown_row", "read_row", "row_label", "to_csv", "to_markdown", "write_outputs"]
