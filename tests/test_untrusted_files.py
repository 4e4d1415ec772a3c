"""Untrusted model files: a malicious pickle never executes; pickles load only by opt-in, tensors only."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from xaisec.errors import ModelError
from xaisec.io import load_weights
from xaisec.models import build_model


class Payload:
    """Unpickling this object would create a marker file (stands for arbitrary code execution)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _model():
    return build_model("small_cnn", (1, 28, 28), 10, width=8)


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": Payload(marker)}, fh)
    with pytest.raises(ModelError, match="pickle"):
        load_weights(_model(), evil)  # refused without opt-in
    with pytest.raises(ModelError, match="Nothing from it was executed"):
        load_weights(_model(), evil, allow_pickle=True)  # opt-in uses weights_only=True
    assert not marker.exists()

    # torch.save's zip format with the payload inside: the same
    torch.save({"w": Payload(marker)}, tmp_path / "zip.pth")
    with pytest.raises(ModelError, match="refused by the safe loader"):
        load_weights(_model(), tmp_path / "zip.pth", allow_pickle=True)
    assert not marker.exists()


def test_plain_pickle_checkpoint_loads_with_opt_in(tmp_path):
    model = _model()
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ok.pth")
    other = load_weights(_model(), tmp_path / "ok.pth", allow_pickle=True)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)


def test_safetensors_with_wrong_contents(tmp_path):
    from safetensors.torch import save_file

    save_file({"something": torch.zeros(3)}, tmp_path / "w.safetensors")
    with pytest.raises(ModelError, match="missing"):
        load_weights(_model(), tmp_path / "w.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(256))
    with pytest.raises(ModelError, match="corrupt"):
        load_weights(_model(), tmp_path / "junk.safetensors")
