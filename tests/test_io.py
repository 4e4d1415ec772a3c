"""Weights as safetensors files (round trip, damaged and missing files) and atomic JSON writes."""
from __future__ import annotations

import json

import pytest
import torch

from xaisec.errors import ModelError
from xaisec.io import atomic_write_json, load_weights, save_weights
from xaisec.models import build_model
from xaisec.train import predict


def test_weights_round_trip_and_errors(tmp_path):
    model = build_model("small_cnn", (1, 28, 28), 10)
    path = save_weights(model, tmp_path / "m.safetensors")
    other = build_model("small_cnn", (1, 28, 28), 10)
    load_weights(other, path)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(predict(other, x), predict(model, x))
    with pytest.raises(ModelError, match="do not match"):
        load_weights(build_model("small_cnn", (1, 28, 28), 5), path)
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_weights(other, truncated)
    with pytest.raises(ModelError, match="pickle"):
        (tmp_path / "m.pt").write_bytes(b"x")
        load_weights(other, tmp_path / "m.pt")
    with pytest.raises(ModelError, match="does not exist"):
        load_weights(other, tmp_path / "none.safetensors")


def test_atomic_json(tmp_path):
    path = atomic_write_json(tmp_path / "a" / "m.json", {"acc": torch.tensor(0.5), "n": 3})
    assert json.loads(path.read_text()) == {"acc": 0.5, "n": 3}
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"acc": 0.5, "n": 3}  # the old file survives a failed write
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]
