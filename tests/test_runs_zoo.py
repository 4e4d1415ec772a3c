"""Models named in a config (``timm:<name>``, ``torchvision:<name>``, a user's ``module:function``) through the whole
life of a run: trained and attacked, killed by SIGKILL mid-training, resumed to the same metrics as an
uninterrupted run, reported, and audited from the run directory (``xaisec audit --run``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from xaisec.cli import main
from xaisec.runs.rundir import RunDir

CONFIG = """\
name: zoo
seed: 2
data: {name: shapes, options: {n: 56, size: 32}}
model: {arch: ARCH}
reference: {epochs: 2, batch_size: 32}
trigger: {name: patch, options: {size: 4}}
attack: {recipe: fang_targeted, epochs: 1, batch_size: 32}
stopping: {monitor_size: 16}
eval: {samples: 2}
"""

USER_MODULE = """\
from torch import nn


def tiny_net(in_channels, num_classes):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))
"""


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["timm:resnet10t", "torchvision:resnet18", "zoo_user_net:tiny_net"])
def test_named_model_run_killed_resumed_and_audited(arch, tmp_path, monkeypatch, capsys):
    (tmp_path / "zoo_user_net.py").write_text(USER_MODULE)  # a user's module in the current directory
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "zoo.yaml"
    config.write_text(CONFIG.replace("ARCH", arch))
    assert main(["run", str(config), "--out", str(tmp_path / "whole")]) == 0
    whole = _metrics(tmp_path / "whole")

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "xaisec", "run", str(config), "--out", str(run)], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = run / "checkpoints" / "reference.safetensors"  # after the first of two reference epochs
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if RunDir(run).state() == "finished":
        pytest.skip("the subprocess finished before it could be killed")
    assert RunDir(run).state() == "interrupted" and not (run / "metrics.json").exists()
    assert main(["run", "--resume", str(run)]) == 0
    resumed = _metrics(run)
    assert resumed.keys() == whole.keys()
    for key, m in whole.items():
        assert resumed[key]["value"] == pytest.approx(m["value"], abs=1e-6, nan_ok=True), key
    assert (run / "report.html").is_file()

    out = tmp_path / "audit"
    assert main(["audit", "--run", str(run), "--checks", "accuracy,rebn", "--images", "16", "--budget", "60",
                 "--device", "cpu", "--out", str(out)]) == 0
    doc = json.loads((out / "audit.json").read_text())
    assert doc["checks"]["accuracy"]["verdict"] != "skipped"
    assert 0 < doc["checks"]["accuracy"]["evidence"]["images"] <= 16  # the run's test split may hold fewer
