"""Checkpointed training: one safetensors file per training stage holding model, optimizer state and a JSON state.

Every epoch ends with a checkpoint written atomically, so a run killed at any moment leaves either the previous
complete checkpoint or the new one (never a model from epoch e with an optimizer from epoch e-1), and a resumed run
reaches the same weights as an uninterrupted one (same seed, same batches, same learning rates). Loading runs no
code (safetensors only).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ModelError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..backdoor.stopping import ABORT, CONTINUE, CONVERGED, StoppingRule
from ..train import Objective, TensorBatches, fit
from .tracking import report_epoch

log = logging.getLogger(__name__)

_MODEL, _OPTIM = "model.", "optim."


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIM}{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name[len(_OPTIM):].split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
    """Write model weights, optimizer state and ``state`` (JSON-able) to ``path`` atomically."""
    from safetensors.torch import save

    tensors = {f"{_MODEL}{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors.update(opt_tensors)
    metadata = {"state": json.dumps(state), "optimizer": json.dumps(opt_meta)}
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    atomic_write_json(path.with_suffix(".json"), state)  # for people; the safetensors metadata is authoritative
    return path


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore ``model`` and ``optimizer`` from ``path``; returns the JSON state. Bad files raise ModelError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        state, opt_meta = json.loads(metadata["state"]), json.loads(metadata["optimizer"])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise ModelError(f"checkpoint {path} is unreadable (truncated or corrupt?): {exc}. Delete it to restart "
                         "this stage from scratch") from exc
    weights = {k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(_unflatten_optimizer({k: v for k, v in tensors.items() if k.startswith(_OPTIM)},
                                                       opt_meta))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelError(f"checkpoint {path} does not match this model/optimizer: {exc}") from exc
    return state


class EpochLR:
    """Learning rate set from a closed form ``base_lr * factor(epoch)`` at each epoch start (no hidden state,
    so a resumed run gets exactly the rates of an uninterrupted one). ``step()`` is called by ``fit``."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, factor: Callable[[int], float],
                 start_epoch: int = 0):
        self.optimizer, self.base_lr, self.factor, self.epoch = optimizer, base_lr, factor, start_epoch
        self._apply()

    def lr(self, epoch: int | None = None) -> float:
        return self.base_lr * self.factor(self.epoch if epoch is None else epoch)

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()

    def step(self) -> None:
        self.epoch += 1
        self._apply()


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
class TrainingStage:
    """A checkpointed training loop inside a run stage (``reference``, ``attacked``...) and its per-epoch history."""

    name: str
    checkpoints: Path
    history: list[dict] = field(default_factory=list)
    stop_reason: str | None = None

    @property
    def checkpoint(self):
        return self.checkpoints / f"{self.name}.safetensors"

    def restore_history(self) -> None:
        """Read the history of an earlier (possibly complete) run of this stage from the checkpoint's JSON copy."""
        path = self.checkpoint.with_suffix(".json")
        if path.is_file():
            state = json.loads(path.read_text())
            self.history, self.stop_reason = state.get("history", []), state.get("stop_reason")

    def train(self, model: nn.Module, batches: TensorBatches, objective: Objective, optimizer: torch.optim.Optimizer,
              epochs: int, base_lr: float, lr_factor: Callable[[int], float], *, freeze_batchnorm: bool = False,
              monitor: Monitor | None = None, stopper: StoppingRule | None = None, progress: bool = True,
              on_log: Callable[[], None] | None = None) -> list[dict]:
        """Train (or continue from the stage's checkpoint) until ``epochs`` or the stopping rule ends it
        (``stop_reason``: ``converged``, ``abort`` or ``epochs``)."""
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
                decision = stopper.observe(record)
                record["early_stopping"] = decision
            done = decision in (CONVERGED, ABORT) or epoch + 1 >= epochs
            self.stop_reason = decision if decision != CONTINUE else ("epochs" if done else None)
            self.history.append(record)
            save_checkpoint(self.checkpoint, model, optimizer,
                            {"epoch": epoch, "history": self.history, "done": done, "stop_reason": self.stop_reason,
                             "stopper": stopper.state() if stopper is not None else None})
            report_epoch(record)
            if on_log is not None:
                on_log()
            if decision == ABORT:
                log.warning("%s: aborted by early stopping (best clean accuracy below %.2f)", self.name, stopper.abort_acc)
            elif decision == CONVERGED:
                log.info("%s: converged after %d epochs (stopping rule %s)", self.name, epoch + 1, stopper.name)
            return done

        fit(model, batches, objective, optimizer, epochs, start_epoch=start, scheduler=lr,
            freeze_batchnorm=freeze_batchnorm, on_epoch_end=on_epoch_end, progress=progress, desc=self.name)
        return self.history


def write_log(path: Path, *stages: TrainingStage) -> None:
    """``log.jsonl``: one JSON line per epoch of every stage, rewritten atomically from the checkpointed history
    (so a resumed run's log has each epoch exactly once)."""
    lines = [json.dumps(r, sort_keys=True) for s in stages for r in s.history]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
