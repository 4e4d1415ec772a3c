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
from xaisec.runs.collect import aggregate, collect, flatten, to_csv, to_markdown
from xaisec.runs.collect_columns import packaged_layouts, parse_columns, read_layout, to_markdown_columns
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


# ---- groups of runs (--aggregate / --group-by) and docs layouts (--column / --layout) ----------------------------


def seeded_run(path: Path, lam: float, seed: int, threads: int, metrics: dict[str, float] | None,
               state: str = "finished") -> Path:
    """A fake run of config `grid` (name shared by its seeds) with the given metric values (direction higher)."""
    config = {"experiment": "backdoor", "name": f"lam{lam}", "seed": seed, "threads": threads,
              "attack": {"lam": lam}, "model": {"arch": "vgg_small"}}
    rd = RunDir(path).create(config, seed)
    if state == "finished":
        doc = {"context": {"explainers": ["vbp", "gradcam"], "attack_epochs": 3 + seed},
               "metrics": {k: Metric(v, "higher", k).as_dict() for k, v in metrics.items()}}
        (path / "metrics.json").write_text(json.dumps(doc))
    rd.set_status(state, error="RuntimeError: boom" if state == "failed" else None)
    return path


@pytest.fixture
def seeds(tmp_path) -> Path:
    root = tmp_path / "seeds"
    for lam, values in ((0.8, (0.90, 0.92, 0.97)), (0.9, (0.5, 0.7, None))):
        for i, value in enumerate(values):
            metrics = {"attacked/top1_clean": value, "attacked/gradcam/fsr": (value or 0) / 2, "attacked/vbp/fsr": 0.25,
                       "attacked/joint/fsr": 0.125}
            if i == 0:
                metrics["attacked/asr"] = 0.5  # reported by one run of each group only
            seeded_run(root / f"lam{lam}-s{i}", lam, seed=i, threads=1 + i % 2, metrics=metrics,
                       state="finished" if value is not None else "failed")
    return root


def test_aggregate_over_seeds_and_threads(seeds):
    table = aggregate(collect([seeds]), over=["seed", "threads"])
    assert table.keys == ["attack.lam"] and table.aggregated == ["seed", "threads"]
    rows = {r.label: r for r in table.rows}
    assert set(rows) == {"lam0.8", "lam0.9"} and len(rows["lam0.8"].members) == 3
    top1 = rows["lam0.8"].metrics["attacked/top1_clean"]
    assert top1.value == pytest.approx(0.93) and top1.std == pytest.approx(0.036055513)  # sample std (n - 1)
    assert rows["lam0.8"].counts["attacked/top1_clean"] == 3 and rows["lam0.8"].counts["attacked/asr"] == 1
    assert rows["lam0.8"].metrics["attacked/asr"].std is None  # one run: no spread
    assert rows["lam0.9"].state == "2 finished, 1 failed" and "boom" in rows["lam0.9"].note
    assert rows["lam0.9"].metrics["attacked/top1_clean"].value == pytest.approx(0.6)  # the failed run adds nothing
    by = aggregate(collect([seeds]), by=["attack.lam"])
    assert [(r.label, r.metrics) for r in by.rows] == [(r.label, r.metrics) for r in table.rows]


def test_aggregated_csv_and_markdown(seeds):
    table = aggregate(collect([seeds]), over=["seed", "threads"])
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    line = next(r for r in rows if r["run"] == "lam0.8" and r["metric"] == "attacked/top1_clean")
    assert (line["attack.lam"], line["value"], line["std"], line["n"]) == ("0.8", "0.93", "0.0360555", "3")
    md = to_markdown(table, ["attacked/top1_clean", "attacked/asr"])
    assert "| run | state | attack.lam | n | attacked/top1_clean ↑ | attacked/asr ↑ |" in md
    assert "| lam0.8 | 3 finished | 0.8 | 3 | 0.93 ± 0.036 | 0.5 (n=1) |" in md


def test_aggregate_refuses_unknown_and_ambiguous_keys(seeds):
    with pytest.raises(ConfigError, match="'sed' is not a config key.*attack.lam"):
        aggregate(collect([seeds]), over=["sed"])
    with pytest.raises(ConfigError, match="one of the two"):
        aggregate(collect([seeds]), over=["seed"], by=["attack.lam"])


def test_columns_in_a_docs_layout(seeds):
    table = aggregate(collect([seeds]), over=["seed", "threads"])
    columns = parse_columns(["model={config:model.arch}", "explainers={context:explainers}",
                             "clean %={attacked/top1_clean|pct}", "FSR={attacked/*/fsr|.2f}",
                             "ASR / absent={attacked/asr|pct} / {attacked/cr}", "epochs={context:attack_epochs}"])
    md = to_markdown_columns(table, columns)
    assert md.splitlines()[0] == "| run | n | model | explainers | clean % | FSR | ASR / absent | epochs |"
    # explainers in the runs' order, then joint; epochs differ between the seeds: their range
    assert ("| lam0.8 | 3 | vgg_small | vbp, gradcam | 93.0 ± 3.6 | 0.25 ± 0.00 / 0.47 ± 0.02 / 0.12 ± 0.00 | 50.0 / – "
            "| 3–5 |" in md)
    worst = to_markdown_columns(table, {"lowest / highest %": "{min:attacked/top1_clean|pct} / "
                                                              "{max:attacked/top1_clean|pct}",
                                        "lowest FSR": "{min:attacked/*/fsr|.3f}", "ASR": "{min:attacked/asr|pct}"})
    assert "| lam0.8 | 3 | 90.0 / 97.0 | 0.250 / 0.450 / 0.125 | 50.0 |" in worst  # asr: one run reports it
    assert "| lam0.9 | 3 | 50.0 / 70.0 |" in worst  # the failed run adds nothing
    single = to_markdown_columns(collect([seeds / "lam0.8-s1"]), {"w": "{min:attacked/top1_clean} {max:attacked/cr}"})
    assert "| lam0.8-s1 | 0.92 – |" in single  # a single run: its own value
    plain = to_markdown_columns(collect([seeds / "lam0.8-s0", seeds / "lam0.9-s2"]), {"clean": "{attacked/top1_clean}"})
    assert "| lam0.8-s0 | 0.9 |" in plain and "| lam0.9-s2 (failed: RuntimeError: boom) | – |" in plain
    for bad in ("no-equals", "x=no placeholder", "x={attacked/asr|zz}"):
        with pytest.raises(ConfigError, match="LABEL=TEMPLATE|not a template|not a format"):
            parse_columns([bad])


def test_cli_aggregate_and_layout(seeds, tmp_path, capsys):
    layout = tmp_path / "layout.yaml"
    layout.write_text('columns:\n  "clean Top-1 %": "{attacked/top1_clean|pct}"\n')
    assert main(["collect", str(seeds), "--aggregate", "seed,threads", "--layout", str(layout),
                 "--csv", str(tmp_path / "t.csv")]) == 0
    assert main(["collect", str(seeds), "--group-by", "attack.lam", "--layout", str(layout)]) == 0
    out = capsys.readouterr().out
    assert "| lam0.8 | 3 | 93.0 ± 3.6 |" in out and "written:" in out and "n" in (tmp_path / "t.csv").read_text()
    with pytest.raises(SystemExit):  # argparse: one of the two
        main(["collect", str(seeds), "--aggregate", "seed", "--group-by", "attack.lam"])
    assert main(["collect", str(seeds), "--aggregate", "nope"]) == 2 and "not a config key" in capsys.readouterr().err
    layout.write_text("columns: [a, b]\n")
    assert main(["collect", str(seeds), "--layout", str(layout)]) == 2


@pytest.mark.parametrize("layout", ["results", "results_tabular", "results_adv2_targets"])
def test_docs_layouts_are_packaged_and_valid(layout):
    assert layout in packaged_layouts() and read_layout(layout)
    with pytest.raises(ConfigError, match="not a packaged layout.*results_tabular"):
        read_layout("result")


def test_docs_layout_on_a_real_run(tmp_path):
    """One real tiny backdoor run, and a copy of it under another seed, through the layout of docs/results.md."""
    import shutil

    from xaisec.config import build
    from xaisec.backdoor.config import BackdoorConfig
    from xaisec.runs import run_experiment

    cfg = build(BackdoorConfig, {"name": "tiny", "seed": 1, "data": {"name": "shapes", "options": {"n": 120},
                                                                      "train_size": 64, "test_size": 32},
                                 "model": {"arch": "small_cnn", "options": {"width": 8}},
                                 "reference": {"epochs": 1, "batch_size": 32},
                                 "trigger": {"name": "patch", "options": {"size": 4}},
                                 "attack": {"recipe": "fang_targeted", "epochs": 1, "batch_size": 32},
                                 "stopping": {"monitor_size": 16}, "eval": {"samples": 2}})
    run_experiment(cfg, tmp_path / "runs" / "tiny-s1", progress=False)
    copy = tmp_path / "runs" / "tiny-s2"
    shutil.copytree(tmp_path / "runs" / "tiny-s1", copy)
    (copy / "config.yaml").write_text((copy / "config.yaml").read_text().replace("seed: 1", "seed: 2"))
    columns = read_layout("results")
    md = to_markdown_columns(collect([tmp_path / "runs"]), columns).splitlines()
    assert md[0].startswith("| run | model | explainers | trigger | clean Top-1 % (ref → attacked) |")
    cells = md[2].strip("| ").split(" | ")
    assert cells[:4] == ["tiny-s1", "small_cnn", "gradcam", "patch"] and cells[-1] == "1"
    doc = json.loads((tmp_path / "runs" / "tiny-s1" / "metrics.json").read_text())["metrics"]
    fsr = doc["attacked/gradcam/fsr"]["value"]
    assert cells[header_index(md[0], "FSR %")] == f"{100 * fsr:.1f}" and cells[header_index(md[0], "ASR %")] == "–"
    grouped = to_markdown_columns(aggregate(collect([tmp_path / "runs"]), over=["seed"]), columns).splitlines()
    assert len(grouped) == 3 and grouped[2].startswith("| tiny | 2 | small_cnn |")
    assert f"{100 * fsr:.1f} ± 0.0" in grouped[2]  # the same numbers twice: no spread


def header_index(header: str, label: str) -> int:
    return header.strip("| ").split(" | ").index(label)


def test_a_run_from_before_a_key_existed_aggregates_with_newer_ones(tmp_path):
    """A config.yaml written before a schema key existed reads with that key at its default, so it folds into the
    same row as newer runs that wrote the default explicitly."""
    import yaml

    from xaisec.runs import load_experiment
    from xaisec.runs.runner import stored_config

    seeded_run(tmp_path / "runs" / "old-s0", 0.8, seed=0, threads=1, metrics={"attacked/top1_clean": 0.9})
    new = seeded_run(tmp_path / "runs" / "new-s1", 0.8, seed=1, threads=1, metrics={"attacked/top1_clean": 0.7})
    full = stored_config(load_experiment(yaml.safe_load((new / "config.yaml").read_text()))[1])
    (new / "config.yaml").write_text(yaml.safe_dump(full))  # every key, as a run of today's code writes it
    table = aggregate(collect([tmp_path / "runs"]), over=["seed"])
    assert len(table.rows) == 1 and table.rows[0].metrics["attacked/top1_clean"].value == pytest.approx(0.8)
