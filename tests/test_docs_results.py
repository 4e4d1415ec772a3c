"""The spread table of docs/results.md is what ``xaisec collect`` makes of the runs archived in docs/runs/spread
(config.yaml, status.json, metrics.json of each run, copied by ``benchmarks/spread.py --archive``): no number of
it is typed by hand, and a change of the collect code or of the ``results`` layout that alters it fails here."""
from __future__ import annotations

from pathlib import Path

import pytest

from xaisec.config import packaged_configs, read_yaml, resolve_config
from xaisec.runs.collect import aggregate, collect
from xaisec.runs.collect_columns import read_layout, to_markdown_columns
from xaisec.runs.runner import with_defaults

DOCS = Path(__file__).resolve().parents[1] / "docs"
SPREAD = DOCS / "runs" / "spread"


@pytest.mark.skipif(not SPREAD.is_dir(), reason="no archived spread runs")
def test_spread_table_is_collect_of_the_archived_runs():
    table = aggregate(collect([SPREAD]), over=["seed", "threads"])
    assert all(row.state.endswith("finished") and "," not in row.state for row in table.rows)
    md = to_markdown_columns(table, read_layout("results"))
    assert md in (DOCS / "results.md").read_text(), "regenerate the table: xaisec collect docs/runs/spread " \
                                                    "--aggregate seed,threads --layout results"


@pytest.mark.skipif(not SPREAD.is_dir(), reason="no archived spread runs")
def test_every_small_packaged_backdoor_config_has_spread_runs():
    """Each packaged mnist5k backdoor config (the ones a 2-core machine runs) over 2 seeds and 1 and 2 threads."""
    small = []
    for name in packaged_configs():
        written = read_yaml(resolve_config(name))
        config = with_defaults(written)
        if (config["experiment"] == "backdoor" and config["data"]["name"] == "mnist5k" and name != "fang_targeted"
                and "sweep" not in written):
            small.append(name)  # fang_targeted: the default under its paper name; sweeps: their own docs
    runs = [read_yaml(p / "config.yaml") for p in SPREAD.iterdir() if p.is_dir()]
    for name in small:
        combos = {(r["seed"], r["threads"]) for r in runs if r["name"] == name}
        assert {s for s, _ in combos} >= {0, 1} and {t for _, t in combos} >= {1, 2}, (name, combos)
