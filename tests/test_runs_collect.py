"""``xaisec collect``: run directories into one table (differing config keys, metrics with directions), long CSV,
wide markdown, figure; unfinished and damaged runs become rows, not crashes."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from xaisec.cli import main
from xaisec.errors import ConfigError
from xaisec.records import Metric
from xaisec.runs.collect import collect, flatten, to_csv, to_markdown
from xaisec.runs.rundir import RunDir


def fake_run(path: Path, lam: float, lr: float, acc: float | None, state: str = "finished") -> Path:
    """A run directory with only what collect reads: config.yaml, status.json and metrics.json."""
    config = {"experiment": "backdoor", "name": path.name, "seed": 0, "attack": {"lam": lam, "lr": lr, "epochs": 3},
              "data": {"name": "mnist5k", "options": {}}}
    rd = RunDir(path).create(config, 0)
    if state == "finished":
        metrics = {"attacked/top1_clean": Metric(acc, "higher", "clean accuracy"),
                   "attacked/noppel_score": Metric(1 - acc, "lower", "score", 0.01)}
        (path / "metrics.json").write_text(json.dumps({"metrics": {k: m.as_dict() for k, m in metrics.items()}}))
    rd.set_status(state, error="RuntimeError: boom" if state == "failed" else None)
    return path


@pytest.fixture
def runs(tmp_path) -> Path:
    for i, (lam, lr) in enumerate([(0.85, 1e-3), (0.9, 1e-3), (0.85, 2e-3), (0.9, 2e-3)]):
        fake_run(tmp_path / "runs" / f"r{i}", lam, lr, 0.9 + 0.01 * i)
    fake_run(tmp_path / "runs" / "failed", 0.95, 1e-3, None, state="failed")
    fake_run(tmp_path / "runs" / "damaged", 0.95, 2e-3, 0.5)
    (tmp_path / "runs" / "damaged" / "metrics.json").write_text("{not json")
    return tmp_path / "runs"


def test_table_has_the_differing_keys_and_every_metric(runs):
    table = collect([runs])
    assert table.keys == ["attack.lam", "attack.lr"]
    assert table.directions == {"attacked/top1_clean": "higher", "attacked/noppel_score": "lower"}
    states = {r.path.name: r.state for r in table.rows}
    assert states == {"r0": "finished", "r1": "finished", "r2": "finished", "r3": "finished", "failed": "failed",
                      "damaged": "damaged"}
    assert "boom" in next(r.note for r in table.rows if r.path.name == "failed")


def test_long_csv_and_wide_markdown(runs):
    table = collect([runs])
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert len(rows) == 4 * 2 + 2  # two metrics per finished run, one line per run without metrics
    r1 = [r for r in rows if r["run"] == "r1"]
    assert {(r["metric"], r["value"], r["direction"]) for r in r1} == {
        ("attacked/top1_clean", "0.91", "higher"), ("attacked/noppel_score", "0.09", "lower")}
    assert r1[0]["attack.lam"] == "0.9" and r1[0]["attack.lr"] == "0.001"
    md = to_markdown(table, ["*noppel*"])
    assert "| run | state | attack.lam | attack.lr | attacked/noppel_score ↓ |" in md
    assert "| r0 | finished | 0.85 | 0.001 | 0.1 ± 0.01 |" in md and "damaged" in md
    with pytest.raises(ConfigError, match="matches none"):
        to_markdown(table, ["attacked/asr"])


def test_cli_writes_csv_markdown_and_figure(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["collect", str(runs / "r0"), str(runs / "r3"), str(runs / "failed"), "--csv", str(out / "t.csv"),
                 "--md", str(out / "t.md"), "--figure", str(out / "t.png")]) == 0
    assert (out / "t.png").stat().st_size > 1000 and "r3" in (out / "t.md").read_text()
    assert main(["collect", str(runs)]) == 0 and "| r2 |" in capsys.readouterr().out
    assert main(["collect", str(tmp_path / "out")]) == 2 and "holds no run" in capsys.readouterr().err
    assert main(["collect", str(runs), "--figure", str(out / "f.png"), "--x", "attack.epochs"]) == 2


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {}}, "d": [1, 2]}) == {"a.b": 1, "a.c": {}, "d": [1, 2]}
