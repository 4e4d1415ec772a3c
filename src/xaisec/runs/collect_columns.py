"""Docs tables in the papers' layout from collected runs: one row per run (or group of runs), one column per
``LABEL=TEMPLATE``, where a template is text with placeholders (``xaisec collect --column`` / ``--layout``).

A placeholder is ``{SOURCE}`` or ``{SOURCE|FORMAT}``:

- ``SOURCE``: a metric key of ``metrics.json`` (``attacked/top1_clean``), where ``*`` stands for one path segment
  (``attacked/*/fsr``: every explainer's, in the run's explainer order, then others such as ``joint``, joined by
  `` / ``); ``config:KEY`` (a dotted key of
  ``config.yaml``, e.g. ``config:model.arch``); ``context:KEY`` (a field of ``metrics.json``'s context, e.g.
  ``context:explainers``; lists are joined by ``, ``); ``min:METRIC`` / ``max:METRIC`` (the lowest / highest
  value over a group's runs, e.g. ``min:attacked/*/fsr``: the worst run; a single run's own value).
- ``FORMAT``: ``pct`` (× 100, one decimal), a Python format spec (``.3f``, ``.4g``, ``d``); default ``.4g``.

A metric of a group of runs (:func:`~xaisec.runs.collect.aggregate`) shows as ``mean ± std`` in that format; a
missing value as ``–``. For example ``clean Top-1 %={reference/top1_clean|pct} → {attacked/top1_clean|pct}``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..errors import ConfigError
from .collect import RunRow, RunTable, row_label, label_roots, markdown_row

_PLACEHOLDER = re.compile(r"\{([^{}|]+)(?:\|([^{}]*))?\}")
MISSING = "–"


def parse_columns(items: Sequence[str]) -> dict[str, str]:
    """``LABEL=TEMPLATE`` items (``--column``) as ``{label: template}``; each template is checked."""
    columns: dict[str, str] = {}
    for item in items:
        label, sep, template = item.partition("=")
        if not sep or not label.strip():
            raise ConfigError(f"--column {item!r} must be LABEL=TEMPLATE, e.g. 'ASR %={{attacked/asr|pct}}'")
        columns[label.strip()] = check_template(template, label)
    return columns


def layout_dir() -> Path:
    """The packaged layouts of the docs' tables (``xaisec/tables/*.yaml``)."""
    return Path(__file__).resolve().parents[1] / "tables"


def packaged_layouts() -> list[str]:
    return sorted(p.stem for p in layout_dir().glob("*.yaml"))


def read_layout(path: str | Path) -> dict[str, str]:
    """The ``columns:`` mapping (label: template, in order) of a layout YAML file or of a packaged layout named
    ``path`` (``results``: docs/results.md's table; see :func:`packaged_layouts`), for ``--layout``."""
    if not Path(path).is_file() and "/" not in str(path) and str(path) in packaged_layouts():
        path = layout_dir() / f"{path}.yaml"
    elif not Path(path).is_file():
        raise ConfigError(f"--layout {path}: no such file, and not a packaged layout ({', '.join(packaged_layouts())})")
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--layout {path}: cannot read it as YAML ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("columns"), dict) or set(doc) - {"columns"}:
        raise ConfigError(f"--layout {path} must hold one mapping, columns: {{LABEL: TEMPLATE, ...}}")
    return {str(k): check_template(v, k) for k, v in doc["columns"].items()}


def check_template(template: Any, label: Any) -> str:
    if not isinstance(template, str) or not _PLACEHOLDER.search(template):
        raise ConfigError(f"column {label!r}: {template!r} is not a template with a {{SOURCE}} or "
                          "{SOURCE|FORMAT} placeholder (see `xaisec collect --help`)")
    for match in _PLACEHOLDER.finditer(template):
        try:
            _format(0.5, match.group(2))
        except (ValueError, TypeError):
            raise ConfigError(f"column {label!r}: {match.group(2)!r} is not a format (pct, or a Python format "
                              "spec such as .3f)") from None
    return template


def _format(value: Any, spec: str | None) -> str:
    if spec == "pct":
        return f"{100 * value:.1f}"
    return format(value, spec or ".4g")


def _matches(pattern: str, key: str) -> bool:
    parts, want = key.split("/"), pattern.split("/")
    return len(parts) == len(want) and all(w == "*" or w == p for w, p in zip(want, parts))


def _explainer_order(key: str, row: RunRow) -> tuple[int, str]:
    """Keys naming one of the run's explainers (ADV2: interpreters) first, in the run's order; others (``joint``)
    after, by name."""
    explainers = list(row.context.get("explainers") or row.context.get("interpreters") or [])
    found = [i for i, name in enumerate(explainers) if name in key.split("/")]
    return (found[0] if found else len(explainers), key)


def _render(source: str, spec: str | None, row: RunRow) -> str:
    if source.startswith(("config:", "context:")):
        where, key = source.split(":", 1)
        value = (row.config if where == "config" else row.context).get(key)
        if value is None:
            return MISSING
        if isinstance(value, list):
            return ", ".join(map(str, value))
        return _format(value, spec) if spec and isinstance(value, (int, float)) else str(value)
    extreme, _, metric = source.rpartition(":") if source.startswith(("min:", "max:")) else ("", "", source)
    keys = [k for k in row.metrics if _matches(metric, k)] if "*" in metric else [metric]
    cells = []
    for key in sorted(keys, key=lambda k: _explainer_order(k, row)):
        m = row.metrics.get(key)
        if m is None or m.value is None:
            cells.append(MISSING)
        elif extreme:
            cells.append(_format(row.extreme(key, extreme), spec))
        else:
            aggregated = bool(row.members) and m.std is not None
            cells.append(_format(m.value, spec) + (f" ± {_format(m.std, spec)}" if aggregated else ""))
    return " / ".join(cells) if cells else MISSING


def render_cell(template: str, row: RunRow) -> str:
    """``template`` with each placeholder replaced by the row's value(s)."""
    return _PLACEHOLDER.sub(lambda m: _render(m.group(1).strip(), m.group(2), row), template)


def to_markdown_columns(table: RunTable, columns: dict[str, str]) -> str:
    """One row per run or group (its label; a run without metrics adds its state), one column per template; a
    group table adds ``n`` (its runs) after the label."""
    roots = label_roots(table)
    n = ["n"] if table.aggregated else []
    lines = [markdown_row(["run", *n, *columns]), "|" + "---|" * (1 + len(n) + len(columns))]
    for row in table.rows:
        label = row_label(row, roots)
        if not row.metrics:
            label += f" ({row.state}{': ' + row.note[:80] if row.note else ''})"
        cells = [label, *([str(len(row.members))] if n else []), *(render_cell(t, row) for t in columns.values())]
        lines.append(markdown_row(cells))
    return "\n".join(lines) + "\n"


__all__ = ["packaged_layouts", "parse_columns", "read_layout", "render_cell", "to_markdown_columns"]
