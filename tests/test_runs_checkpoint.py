"""Checkpoints (model + optimizer + state in one safetensors file), closed-form learning rates, run directories."""
from __future__ import annotations

import json

import pytest
import torch

from xaisec.runs.checkpoint import EpochLR, load_checkpoint, save_checkpoint, schedule
from xaisec.errors import ModelError


def _step(model, opt, x):
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_roundtrip_continues_bit_identically(tmp_path, tiny_cnn):
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


def test_corrupt_and_mismatched_checkpoints(tmp_path, tiny_cnn):
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


def test_epoch_lr_is_stateless(tiny_cnn):
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = EpochLR(opt, 0.1, lambda e: 0.5 ** e)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    sched.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    resumed = EpochLR(opt, 0.1, lambda e: 0.5 ** e, start_epoch=2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025) and resumed.lr(3) == pytest.approx(0.0125)


def test_schedules():
    assert schedule("constant", 10)(7) == 1.0
    assert schedule("cosine", 10)(0) == 1.0 and schedule("cosine", 10)(10) == pytest.approx(0.0)
    assert schedule("step", 100, step_size=20, gamma=0.5)(45) == 0.25
    assert schedule("inverse", 10)(3) == 0.25
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule("warmup", 10)
