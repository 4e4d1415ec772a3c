"""The one runner, on a tiny experiment kind defined here: stage order and artifacts, metrics returned, resume,
cached work inside a stage, validation before the run directory exists, the caller's RNG and threads untouched."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from xaisec import numerics
from xaisec.config import build
from xaisec.errors import ConfigError, DataError
from xaisec.records import Metric
from xaisec.runs import EXPERIMENTS, Experiment, RunContext, Stage, read_metrics, register_experiment, run_experiment
from xaisec.runs.artifacts import Artifact
from xaisec.runs.schema import RunConfig

CALLS: list[str] = []


@dataclass
class Numbers(Artifact):
    x: torch.Tensor
    info: dict = field(default_factory=dict)


@dataclass
class ToyConfig(RunConfig):
    experiment: str = "toy"
    fail_in: str | None = None
    size: int = 3


def _first(ctx: RunContext) -> Numbers:
    CALLS.append("first")
    with numerics.flush_denormals() as flushed:  # what an attack or a training loop does with its default
        pass
    return Numbers(torch.rand(ctx.cfg.size), {"seed": ctx.cfg.seed, "flushed": flushed})


def _second(ctx: RunContext) -> Numbers:
    CALLS.append("second")
    parts = [ctx.cached(f"part{i}", lambda i=i: ctx["first"].x * i) for i in range(3)]
    if ctx.cfg.fail_in == "second":
        raise RuntimeError("boom")
    return Numbers(torch.stack(parts).sum(0))


if "toy" not in EXPERIMENTS:
    @register_experiment
    class Toy(Experiment):
        name = "toy"
        schema = ToyConfig
        stages = (Stage("first", Numbers, _first), Stage("second", Numbers, _second),
                  Stage("never", Numbers, _first, enabled=lambda cfg: False))

        def prepare(self, cfg):
            if cfg.size > 100:
                raise DataError("size too large for the toy")
            return None

        def metrics(self, ctx):
            return {"total": Metric(ctx["second"].x.sum().item(), "higher", "sum")}, {"what": "toy"}

        def report(self, run_dir: Path) -> Path:
            path = Path(run_dir) / "report.html"
            path.write_text(f"<p>{read_metrics(run_dir)[0]['total'].value}</p>")
            return path


def cfg(**kw) -> ToyConfig:
    return build(ToyConfig, kw)


def test_stages_run_in_order_and_metrics_come_back(tmp_path):
    CALLS.clear()
    result = run_experiment(cfg(), tmp_path / "r")
    assert CALLS == ["first", "second"]
    assert isinstance(result.metrics["total"], Metric) and result.context == {"what": "toy"}
    doc = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert doc["experiment"] == "toy" and doc["metrics"]["total"]["direction"] == "higher"
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["state"] == "finished" and set(status["seconds"]) == {"first", "second"}
    assert not (tmp_path / "r" / "never.safetensors").exists()
    assert result.report.is_file()


def test_resume_loads_finished_stages_and_cached_work(tmp_path):
    run = tmp_path / "r"
    with pytest.raises(RuntimeError, match="boom"):
        run_experiment(cfg(fail_in="second"), run)
    assert json.loads((run / "status.json").read_text())["state"] == "failed"
    assert (run / "first.safetensors").is_file() and len(list((run / "cache" / "second").iterdir())) == 3
    CALLS.clear()
    with pytest.raises(ConfigError, match="differs.*fail_in"):
        run_experiment(cfg(), run, resume=True)  # another config than the stored one
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("fail_in: second", "fail_in: null"))
    first = Numbers.load(run / "first.safetensors").x
    result = run_experiment(cfg(), run, resume=True)
    assert CALLS == ["second"]  # the first stage was loaded, not rerun
    assert result.metrics["total"].value == pytest.approx(3 * first.sum().item(), rel=1e-6)


def test_resume_of_a_run_started_before_a_key_was_added(tmp_path):
    run = tmp_path / "r"
    with pytest.raises(RuntimeError, match="boom"):
        run_experiment(cfg(fail_in="second"), run)
    stored = yaml.safe_load((run / "config.yaml").read_text())
    del stored["distributed"]  # a section the schema gained after this run started
    stored["fail_in"] = None
    (run / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    assert run_experiment(cfg(), run, resume=True).metrics["total"].value is not None
    stored["size"] = 4
    (run / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    with pytest.raises(ConfigError, match="differs.*size: stored 4, given 3"):  # a value it holds still counts
        run_experiment(cfg(), run, resume=True)


def test_bad_input_creates_no_run_directory(tmp_path):
    with pytest.raises(DataError):
        run_experiment(cfg(size=1000), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_an_existing_run_is_never_silently_reused(tmp_path):
    run_experiment(cfg(), tmp_path / "r")
    old = Numbers.load(tmp_path / "r" / "first.safetensors").x
    with pytest.raises(ConfigError, match="already holds a run"):
        run_experiment(cfg(), tmp_path / "r")
    run_experiment(cfg(seed=4), tmp_path / "r", overwrite=True)
    assert not torch.equal(Numbers.load(tmp_path / "r" / "first.safetensors").x, old)  # recomputed, not reused
    assert "seed: 4" in (tmp_path / "r" / "config.yaml").read_text()


def test_caller_rng_and_threads_are_left_alone(tmp_path):
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = run_experiment(cfg(threads=1), tmp_path / "a").metrics["total"].value
    assert torch.equal(torch.rand(3), expected)  # the run used its own seed and restored ours
    assert torch.get_num_threads() == threads
    assert run_experiment(cfg(), tmp_path / "b").metrics["total"].value == a  # same seed, same result


def test_flush_denormals_switch_reaches_the_library(tmp_path):
    run_experiment(cfg(flush_denormals=False), tmp_path / "off")
    assert Numbers.load(tmp_path / "off" / "first.safetensors").info["flushed"] is False
    run_experiment(cfg(), tmp_path / "on")
    supported = torch.set_flush_denormal(True)
    torch.set_flush_denormal(False)
    assert Numbers.load(tmp_path / "on" / "first.safetensors").info["flushed"] is supported


@pytest.mark.parametrize("data, message", [
    ({"name": "a/b"}, "plain folder name"), ({"name": ".hidden"}, "plain folder name"), ({"seed": 2**40}, "seed"),
    ({"threads": 0}, "threads"), ({"size": float("nan")}, "integer"), ({"data": {"name": "mnist5k", "options": {"bogus": 1}}}, "no option 'bogus'"),
    ({"model": {"arch": "small_cnn", "options": {"widht": 8}}}, "Did you mean 'width'"),
    ({"experiment": "toyy"}, "for this schema|experiment"),
])
def test_shared_sections_are_validated(data, message):
    with pytest.raises(ConfigError, match=message):
        build(ToyConfig, data)
