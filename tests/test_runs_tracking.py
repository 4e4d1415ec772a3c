"""Per-epoch trackers: records reach the callbacks of a ``track_epochs`` block (and nothing outside it), and
TensorBoard gets one scalar per numeric field."""
from __future__ import annotations

import pytest
import torch

from xaisec.models import build_model
from xaisec.runs.checkpoint import TrainingStage, schedule
from xaisec.runs.tracking import TensorBoardTracker, report_epoch, track_epochs
from xaisec.train import TensorBatches, cross_entropy


def train_two_epochs(tmp_path, name: str) -> None:
    model = build_model("small_cnn", (1, 8, 8), 3, width=4)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 3
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    TrainingStage(name, tmp_path).train(model, TensorBatches(x, y, batch_size=8), cross_entropy, optimizer, 2, 1e-2,
                                        schedule("constant", 2), progress=False)


def test_trackers_get_each_epoch_inside_the_block_only(tmp_path):
    seen: list[dict] = []
    with track_epochs(seen.append):
        train_two_epochs(tmp_path, "inside")
    train_two_epochs(tmp_path, "outside")
    assert [(r["stage"], r["epoch"]) for r in seen] == [("inside", 1), ("inside", 2)]
    assert {"loss", "ce", "lr"} <= set(seen[0])


def test_tensorboard_tracker_writes_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardTracker(tmp_path / "tb") as tracker, track_epochs(tracker):
        report_epoch({"stage": "attack", "epoch": 1, "loss": 0.5, "early_stopping": "continue", "nan": float("nan")})
        report_epoch({"stage": "attack", "epoch": 2, "loss": 0.25})
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert events.Tags()["scalars"] == ["attack/loss"]
    assert [(e.step, e.value) for e in events.Scalars("attack/loss")] == [(1, 0.5), (2, 0.25)]
