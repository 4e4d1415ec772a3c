"""Per-epoch training checkpoints in one safetensors file: model, optimizer state and a JSON state.

One file per stage, written atomically, so a run killed at any moment leaves either the previous complete
checkpoint or the new one, never a model from epoch e with an optimizer from epoch e-1. The JSON state (epoch,
history, early-stopping state) sits in the file's metadata; a readable copy is written next to it. Loading
runs no code (safetensors only).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import ModelError
from .io import atomic_write_bytes, atomic_write_json

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
