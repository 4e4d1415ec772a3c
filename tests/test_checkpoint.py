"""Checkpoints (model + optimizer + state in one safetensors file), closed-form learning rates, run directories."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_cnn
from xaisec.checkpoint import EpochLR, load_checkpoint, save_checkpoint
from xaisec.errors import ModelError
from xaisec.rundir import RunDir, unique_dir


def _step(model, opt, x):
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_roundtrip_continues_bit_identically(tmp_path):
    x = torch.rand(8, 1, 12, 12)
    model, opt = tiny_cnn(batchnorm=True), None
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        _step(model, opt, x)
    path = save_checkpoint(tmp_path / "ck.safetensors", model, opt, {"epoch": 2, "history": [{"loss": 1.5}]})
    assert json.loads(path.with_suffix(".json").read_text())["epoch"] == 2
    twin = tiny_cnn(batchnorm=True)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-2)
    state = load_checkpoint(path, twin, twin_opt)
    assert state == {"epoch": 2, "history": [{"loss": 1.5}]}
    for _ in range(2):
        _step(model, opt, x)
        _step(twin, twin_opt, x)
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters())
    path = save_checkpoint(tmp_path / "ck.safetensors", model, opt, {"epoch": 0})
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ModelError, match="unreadable"):
        load_checkpoint(truncated, model, opt)
    other = tiny_cnn(num_classes=7)
    with pytest.raises(ModelError, match="does not match"):
        load_checkpoint(path, other, torch.optim.Adam(other.parameters()))


def test_epoch_lr_is_stateless():
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = EpochLR(opt, 0.1, lambda e: 0.5 ** e)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    sched.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    resumed = EpochLR(opt, 0.1, lambda e: 0.5 ** e, start_epoch=2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025) and resumed.lr(3) == pytest.approx(0.0125)


def test_rundir_markers(tmp_path):
    rd = RunDir(tmp_path / "run").create({"a": 1}, seed=3)
    assert rd.status()["state"] == "running" and not rd.finished
    assert rd.read_config() == {"a": 1}
    env = json.loads((rd / "environment.json").read_text())
    assert env["seed"] == 3 and "torch" in env
    rd.set_status("finished", stage="done")
    assert rd.finished
    assert unique_dir(tmp_path / "run") == tmp_path / "run-2"
    assert unique_dir(tmp_path / "new") == tmp_path / "new"
