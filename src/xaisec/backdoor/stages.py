"""Checkpointed training stages: every epoch ends with a checkpoint, so ``xaisec run --resume`` continues a killed
run and reaches the same weights as an uninterrupted one (same seed, same batches, same learning rates).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..checkpoint import EpochLR, load_checkpoint, save_checkpoint
from ..io import atomic_write_text
from ..rundir import RunDir
from ..train import Objective, TensorBatches, fit
from .stopping import ABORT, CONTINUE, CONVERGED, EarlyStopping

log = logging.getLogger(__name__)

Monitor = Callable[[nn.Module], dict[str, float]]


def schedule(kind: str, epochs: int, step_size: int = 20, gamma: float = 0.5) -> Callable[[int], float]:
    """Learning-rate factor per epoch: ``constant``, ``cosine`` (over ``epochs``), ``step`` (x ``gamma`` every
    ``step_size`` epochs, Fang et al.) or ``inverse`` (1 / (1 + epoch), Noppel et al.'s lr/epoch decay)."""
    if kind == "constant":
        return lambda e: 1.0
    if kind == "cosine":
        return lambda e: 0.5 * (1 + math.cos(math.pi * e / max(epochs, 1)))
    if kind == "step":
        return lambda e: gamma ** (e // step_size)
    if kind == "inverse":
        return lambda e: 1.0 / (1 + e)
    raise ValueError(f"unknown schedule {kind!r}")


@dataclass
class Stage:
    """One training stage (``reference`` or ``attack``) of a run and its per-epoch history."""

    name: str
    rd: RunDir
    history: list[dict] = field(default_factory=list)
    stop_reason: str | None = None

    @property
    def checkpoint(self):
        return self.rd.checkpoints / f"{self.name}.safetensors"

    def restore_history(self) -> None:
        """Read the history of an earlier (possibly complete) run of this stage from the checkpoint's JSON copy."""
        path = self.checkpoint.with_suffix(".json")
        if path.is_file():
            state = json.loads(path.read_text())
            self.history, self.stop_reason = state.get("history", []), state.get("stop_reason")

    def train(self, model: nn.Module, batches: TensorBatches, objective: Objective, optimizer: torch.optim.Optimizer,
              epochs: int, base_lr: float, lr_factor: Callable[[int], float], *, freeze_batchnorm: bool = False,
              monitor: Monitor | None = None, stopper: EarlyStopping | None = None, progress: bool = True,
              on_log: Callable[[], None] | None = None) -> list[dict]:
        """Train (or continue from the stage's checkpoint) until ``epochs`` or early stopping."""
        start = 0
        if self.checkpoint.is_file():
            state = load_checkpoint(self.checkpoint, model, optimizer)
            self.history, self.stop_reason, start = state["history"], state.get("stop_reason"), state["epoch"] + 1
            if stopper is not None and state.get("stopper"):
                stopper.load(state["stopper"])
            if state["done"]:
                log.info("%s: complete in the checkpoint (%d epochs)", self.name, len(self.history))
                return self.history
            log.info("%s: resuming after epoch %d", self.name, start)
        lr = EpochLR(optimizer, base_lr, lr_factor, start)

        def on_epoch_end(epoch: int, logs: dict[str, float]) -> bool:
            record = {"stage": self.name, "epoch": epoch + 1, "lr": lr.lr(epoch), **logs}
            if monitor is not None:
                record.update(monitor(model))
            decision = CONTINUE
            if stopper is not None:
                dissims = [v for k, v in record.items() if k.startswith("monitor/") and "/map_" in k]
                decision = stopper.update(record.get("monitor/acc_clean", 0.0), dissims)
                record["early_stopping"] = decision
            done = decision in (CONVERGED, ABORT) or epoch + 1 >= epochs
            self.stop_reason = decision if decision != CONTINUE else ("epochs" if done else None)
            self.history.append(record)
            save_checkpoint(self.checkpoint, model, optimizer,
                            {"epoch": epoch, "history": self.history, "done": done, "stop_reason": self.stop_reason,
                             "stopper": stopper.state() if stopper is not None else None})
            if on_log is not None:
                on_log()
            if decision == ABORT:
                log.warning("%s: aborted by early stopping (best clean accuracy below %.2f)", self.name, stopper.abort_acc)
            elif decision == CONVERGED:
                log.info("%s: converged after %d epochs (early stopping)", self.name, epoch + 1)
            return done

        fit(model, batches, objective, optimizer, epochs, start_epoch=start, scheduler=lr,
            freeze_batchnorm=freeze_batchnorm, on_epoch_end=on_epoch_end, progress=progress, desc=self.name)
        return self.history


def write_log(rd: RunDir, *stages: Stage) -> None:
    """``log.jsonl``: one JSON line per epoch of every stage, rewritten atomically from the checkpointed history
    (so a resumed run's log has each epoch exactly once)."""
    lines = [json.dumps(r, sort_keys=True) for s in stages for r in s.history]
    atomic_write_text(rd / "log.jsonl", "\n".join(lines) + ("\n" if lines else ""))
