"""Per-epoch tracking of training stages: callbacks that receive each epoch's record (stage, epoch, learning
rate, loss parts, monitored metrics), e.g. :class:`TensorBoardTracker`.

Nothing is tracked unless a caller asks: ``with track_epochs(tracker): run_experiment(...)``. The trackers live
in a context variable for the block, so no experiment code passes them around and nothing global is left set.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ConfigError

EpochTracker = Callable[[dict], None]

_TRACKERS: contextvars.ContextVar[tuple[EpochTracker, ...]] = contextvars.ContextVar("xaisec_trackers", default=())


@contextlib.contextmanager
def track_epochs(*trackers: EpochTracker) -> Iterator[None]:
    """Call every tracker with each training epoch's record inside the block (nested blocks add trackers)."""
    token = _TRACKERS.set(_TRACKERS.get() + trackers)
    try:
        yield
    finally:
        _TRACKERS.reset(token)


def report_epoch(record: dict) -> None:
    """Hand ``record`` to the active trackers (called by the training loop once per epoch)."""
    for tracker in _TRACKERS.get():
        tracker(record)


class TensorBoardTracker:
    """Writes each numeric field of an epoch record as a TensorBoard scalar ``<stage>/<field>`` at step ``epoch``
    into ``log_dir`` (``tensorboard --logdir <sweep>/trials`` compares trials). Needs the ``tensorboard``
    package (``pip install 'xaisec[track]'``)."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("TensorBoard tracking needs the tensorboard package: pip install 'xaisec[track]'") from None
        self._make = lambda: SummaryWriter(str(log_dir))
        self.writer = None  # created with the first record: the run directory must not exist before its run

    def __call__(self, record: dict) -> None:
        if self.writer is None:
            self.writer = self._make()
        stage, step = record.get("stage", "train"), int(record.get("epoch", 0))
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch" and math.isfinite(value):
                self.writer.add_scalar(f"{stage}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> "TensorBoardTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["EpochTracker", "TensorBoardTracker", "report_epoch", "track_epochs"]
