"""``xaisec run`` of a tiny config end to end, determinism, resume after an interruption (in-process and SIGKILL),
and ``xaisec report`` rebuilding the report from the artifacts alone."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from run_dirs import copy_without
from xaisec.runs import checkpoint as stages
from xaisec.cli import main
from xaisec.errors import XaisecError
from xaisec.report.screenshot import find_browser, screenshot

TINY = """\
name: tiny
seed: 1
data: {name: shapes, options: {n: 160}}
model: {arch: small_cnn, options: {width: 8}}
reference: {epochs: 2, batch_size: 32}
trigger: {name: patch, options: {size: 4}}
attack: {recipe: RECIPE, epochs: 2, batch_size: 32}
stopping: {monitor_size: 32}
eval: {samples: 3}
"""


def tiny_config(tmp_path: Path, recipe: str = "fang_targeted") -> Path:
    path = tmp_path / f"{recipe}.yaml"
    path.write_text(TINY.replace("RECIPE", recipe))
    return path


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    assert main(["run", str(tiny_config(tmp)), "--out", str(tmp / "a")]) == 0
    return tmp / "a"


def test_run_writes_every_artifact(finished_run, capsys):
    for name in ("config.yaml", "environment.json", "status.json", "reference.safetensors", "attacked.safetensors",
                 "metrics.json", "log.jsonl", "evaluation.safetensors", "report.html", "figures/triggers.png",
                 "figures/maps_gradcam.png", "figures/training.png", "checkpoints/attack.safetensors"):
        assert (finished_run / name).is_file(), name
    assert json.loads((finished_run / "status.json").read_text())["state"] == "finished"
    doc = metrics(finished_run)
    for key in ("attacked/top1_clean", "attacked/gradcam/fsr", "attacked/gradcam/cr", "reference/gradcam/fsr",
                "attacked/gradcam/trigger_mass_trig", "attacked/top1_drop"):
        assert doc["metrics"][key]["direction"] in ("higher", "lower", "none"), key
    assert doc["context"]["thresholds"]["gradcam"] == {"value": 0.2, "paper": 0.2}
    assert set(json.loads((finished_run / "status.json").read_text())["seconds"]) == {
        "reference", "poisoning", "attacked", "evaluation"}
    log = [json.loads(line) for line in (finished_run / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in log] == [("reference", 1), ("reference", 2), ("attack", 1), ("attack", 2)]
    assert "monitor/gradcam/map_goal" in log[-1]


def test_same_seed_same_metrics(finished_run, tmp_path):
    assert main(["run", str(tiny_config(tmp_path)), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "metrics.json").read_bytes() == (finished_run / "metrics.json").read_bytes()


class Killed(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted(finished_run, tmp_path, monkeypatch):
    real = stages.save_checkpoint

    def dies_after_first_attack_epoch(path, model, optimizer, state):
        real(path, model, optimizer, state)
        if Path(path).name == "attack.safetensors" and state["epoch"] == 0:
            raise Killed

    monkeypatch.setattr(stages, "save_checkpoint", dies_after_first_attack_epoch)
    with pytest.raises(Killed):
        main(["run", str(tiny_config(tmp_path)), "--out", str(tmp_path / "c")])
    run = tmp_path / "c"
    assert json.loads((run / "status.json").read_text())["state"] == "failed"
    assert (run / "reference.safetensors").is_file()  # the finished stage's artifact is kept
    assert not (run / "metrics.json").exists() and not (run / "attacked.safetensors").exists()
    monkeypatch.setattr(stages, "save_checkpoint", real)
    assert main(["run", "--resume", str(run)]) == 0
    assert metrics(run) == metrics(finished_run)
    epochs = [(r["stage"], r["epoch"]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]
    assert epochs == [("reference", 1), ("reference", 2), ("attack", 1), ("attack", 2)]
    assert main(["run", "--resume", str(run)]) == 0  # a finished run: nothing to do


def test_sigkill_then_resume(finished_run, tmp_path):
    """A real SIGKILL mid-training (in a subprocess), then --resume reaches the same metrics."""
    run = tmp_path / "k"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "xaisec", "run", str(tiny_config(tmp_path)), "--out", str(run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = run / "checkpoints" / "reference.safetensors"  # the earliest one: the widest window to kill in
    deadline = time.time() + 60
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (run / "status.json").is_file() and json.loads((run / "status.json").read_text())["state"] == "finished":
        pytest.skip("the subprocess finished before it could be killed")
    assert not (run / "metrics.json").exists()
    from xaisec.runs.rundir import RunDir

    assert RunDir(run).state() == "interrupted"  # status.json still says running, but its process is gone
    assert main(["run", "--resume", str(run)]) == 0
    assert metrics(run) == metrics(finished_run)


def test_report_rebuilds_from_artifacts(finished_run, tmp_path, capsys):
    run = copy_without(finished_run, tmp_path / "copy", ("reference", "attacked"))  # no model needed
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "report.html" in capsys.readouterr().out
    assert html.count("data:image/png;base64,") >= 3 and "http://" not in html and "https://" not in html
    assert "fang_targeted" in html and "gradcam · fsr" in html and "↑ higher" in html


def test_report_of_an_unfinished_run_says_how_to_finish(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("experiment: backdoor\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "xaisec run --resume" in capsys.readouterr().err


def test_the_default_attack_succeeds_on_a_small_run(tmp_path):
    """The packaged default config, shrunk (500 mnist5k training images, 8 attack epochs at a higher learning
    rate): the attack must actually move the triggered maps (reference FSR 0, attacked 100% on seed 0) while
    keeping clean maps and accuracy. Guards against a change that silently breaks the attack (a bug once
    dropped the default run's FSR to 2.9% with every other test passing)."""
    run = tmp_path / "small"
    assert main(["run", "default", "data.train_size=500", "data.test_size=200", "reference.epochs=6",
                 "reference.batch_size=32", "attack.epochs=8", "attack.batch_size=32", "attack.lr=1e-2",
                 "stopping.monitor_size=100", "eval.samples=2", "--threads", "1", "--out", str(run)]) == 0
    m = {k: v["value"] for k, v in metrics(run)["metrics"].items()}
    assert m["reference/gradcam/fsr"] <= 0.1 and m["reference/top1_clean"] >= 0.75
    assert m["attacked/gradcam/fsr"] >= 0.8 and m["attacked/gradcam/cr"] >= 0.9
    assert m["attacked/top1_clean"] >= m["reference/top1_clean"] - 0.05


@pytest.mark.parametrize("recipe", ["noppel_dual", "latka_badnets", "fang_nontargeted"])
def test_other_recipes_run(recipe, tmp_path):
    out = tmp_path / recipe
    assert main(["run", str(tiny_config(tmp_path, recipe)), "attack.epochs=1", "reference.epochs=1",
                 "--out", str(out)]) == 0
    doc = metrics(out)
    assert doc["context"]["recipe"] == recipe
    assert ("attacked/asr" in doc["metrics"]) == (recipe != "fang_nontargeted")


@pytest.mark.skipif(find_browser() is None, reason="no Chromium-family browser installed")
def test_report_renders_in_headless_chromium(finished_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    assert main(["report", str(run), "--screenshot"]) == 0
    assert "report.png" in capsys.readouterr().out
    shot = np.asarray(Image.open(run / "report.png").convert("L"), dtype=np.float32)
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    empty = np.asarray(Image.open(screenshot(blank, tmp_path / "blank.png", height=600)).convert("L"), dtype=np.float32)
    assert empty.shape == (600, 1280) and shot.shape[1] == 1280
    assert shot.shape[0] > 3000  # the whole page, not the first 3000 px
    assert empty.std() < 1.0  # a blank page renders uniformly white
    # the report's images (dark MNIST digits and heat maps) and tables cover a sizeable part of the page
    assert (shot < 128).mean() > 0.02 and shot[:1500].std() > 20


def test_screenshot_without_a_browser_says_what_to_install(monkeypatch, tmp_path):
    import xaisec.report.screenshot as shots

    monkeypatch.setattr(shots, "find_browser", lambda: None)
    page = tmp_path / "r.html"
    page.write_text("<html></html>")
    with pytest.raises(XaisecError, match="install"):
        shots.screenshot(page, tmp_path / "r.png")


def test_data_efficient_poisoning_replaces_rd_selected_images(tmp_path):
    """Latka et al.'s setting: a fixed number of training images replaced by triggered ones, chosen by RD."""
    from xaisec.runs.backdoor import PoisonChoice

    out = tmp_path / "rd"
    assert main(["run", str(tiny_config(tmp_path, "latka_badnets")), "attack.epochs=1", "reference.epochs=1",
                 "attack.poison_mode=replace", "attack.poison_selection=rd", "attack.poison_count=12",
                 "attack.rd={rounds: 2, epochs: 1}", "--out", str(out)]) == 0
    choice = PoisonChoice.load(out / "poisoning.safetensors")
    assert len(choice.indices) == 12 and len(choice.mean_rd) == 2
    assert "attacked/asr" in metrics(out)["metrics"]


def test_joint_attacks_report_fangs_averaged_rates(tmp_path):
    out = tmp_path / "joint"
    assert main(["run", str(tiny_config(tmp_path, "fang_joint")), "attack.epochs=1", "reference.epochs=1",
                 "--out", str(out)]) == 0
    m = metrics(out)["metrics"]
    fsr = [m[f"attacked/{e}/fsr"]["value"] for e in ("gradcam", "simplegrad", "vbp")]
    assert m["attacked/joint/fsr"]["value"] == pytest.approx(sum(fsr) / 3, abs=1e-6)


def test_reference_training_in_bf16_and_fp16_refused_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "bf16"
    assert main(["run", str(tiny_config(tmp_path)), "reference.precision=bf16", "reference.epochs=1",
                 "attack.epochs=1", "--out", str(out)]) == 0
    assert metrics(out)["metrics"]["reference/top1_clean"]["value"] is not None
    assert main(["run", str(tiny_config(tmp_path)), "reference.precision=fp16", "device=cpu",
                 "--out", str(tmp_path / "fp16")]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err and not (tmp_path / "fp16").exists()


def test_background_from_data_gives_gradientshap_training_images_only_when_asked():
    from types import SimpleNamespace

    from xaisec.backdoor import BackdoorConfig
    from xaisec.config import load_config
    from xaisec.explainers import draw_background
    from xaisec.runs.backdoor import eval_options

    from xaisec.data import TensorImages

    x_train = torch.rand(100, 1, 8, 8)
    data = SimpleNamespace(train=TensorImages(x_train, torch.zeros(100, dtype=torch.long)))
    keys = ["attack.explainers=[gradshap, simplegrad]", "eval.explainer_options={gradshap: {n_samples: 8}}", "seed=3"]
    default = eval_options(load_config(BackdoorConfig, overrides=keys), data, ["gradshap", "simplegrad"])
    assert default == {"gradshap": {"n_samples": 8}}  # the black baseline, as before
    drawn = eval_options(load_config(BackdoorConfig, overrides=[*keys, "eval.background_from_data=true"]), data,
                         ["gradshap", "simplegrad"])
    assert drawn["simplegrad"] == {} and drawn["gradshap"]["n_samples"] == 8
    assert torch.equal(drawn["gradshap"]["baselines"], draw_background(x_train, 64, 3))
