"""Typed stage artifacts: tensors and nested dicts of tensors as safetensors, the rest as JSON; damaged files."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from safetensors.torch import load_file

from xaisec.errors import ConfigError
from xaisec.runs.artifacts import Artifact
from xaisec.runs.common import TrainedModel


@dataclass
class Example(Artifact):
    x: torch.Tensor
    maps: dict
    numbers: dict
    note: str | None = None
    empty: dict = field(default_factory=dict)


def test_round_trip_keeps_types_and_odd_keys(tmp_path):
    maps = {"pgd": {"gradcam": torch.rand(2, 1, 4, 4)}, "pred/reference/clean": torch.arange(3)}
    art = Example(torch.rand(3, 2), maps, {"asr": 0.5, "rates": [1, 2]}, "hello")
    back = Example.load(art.save(tmp_path / "a.safetensors"))
    assert torch.equal(back.x, art.x) and back.note == "hello" and back.empty == {}
    assert torch.equal(back.maps["pgd"]["gradcam"], maps["pgd"]["gradcam"])
    assert torch.equal(back.maps["pred/reference/clean"], maps["pred/reference/clean"])
    assert back.numbers == {"asr": 0.5, "rates": [1, 2]}


def test_tensors_sharing_memory_are_saved_as_copies(tmp_path):
    shared = torch.rand(4, 1, 3, 3)  # e.g. target: benign, where the target maps are the benign maps
    art = Example(shared[0, 0], {"benign": shared, "targets": shared}, {})
    back = Example.load(art.save(tmp_path / "a.safetensors"))
    assert torch.equal(back.maps["benign"], shared) and torch.equal(back.maps["targets"], shared)
    assert torch.equal(back.x, shared[0, 0])


def test_root_field_is_a_plain_state_dict(tmp_path):
    weights = {"conv.weight": torch.rand(2, 2), "fc.bias": torch.zeros(3)}
    path = TrainedModel(weights, [{"epoch": 1}], "epochs").save(tmp_path / "m.safetensors")
    assert set(load_file(str(path))) == set(weights)  # what load_weights and `xaisec audit` read
    back = TrainedModel.load(path)
    assert back.history == [{"epoch": 1}] and back.stop_reason == "epochs" and set(back.weights) == set(weights)


def test_damaged_or_foreign_files_are_named(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(ConfigError, match="bad.safetensors is damaged"):
        Example.load(bad)
    other = TrainedModel({"w": torch.zeros(1)}).save(tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="holds a TrainedModel, not a Example"):
        Example.load(other)
