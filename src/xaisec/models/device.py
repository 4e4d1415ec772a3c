"""Devices: resolve a configured device name before any work, and mixed precision for plain forward passes."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a ``torch.device``.
    A CUDA device this machine does not have raises :class:`ConfigError` now, before any work is done."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a device name; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"device {name!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but this machine has no usable CUDA GPU "
                          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use device 'cpu' or 'auto'")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"device {name!r} does not exist: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (CPU for a model without any)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def autocast(device: str | torch.device, dtype: str | None = "bf16") -> Iterator[None]:
    """Mixed precision (``"bf16"`` or ``"fp16"``) for plain forward passes (evaluation, predictions, reference
    training); ``None`` runs in full precision. Explanation maps and their second-order gradients are best
    computed in float32, so explainers do not use this by themselves."""
    if dtype is None:
        yield
        return
    if dtype not in AUTOCAST_DTYPES:
        raise ConfigError(f"autocast dtype must be one of {sorted(AUTOCAST_DTYPES)} or None, got {dtype!r}")
    device_type = torch.device(device).type
    if device_type == "cpu" and AUTOCAST_DTYPES[dtype] is torch.float16:
        raise ConfigError("fp16 autocast needs a CUDA device; use 'bf16' on the CPU")
    with torch.autocast(device_type=device_type, dtype=AUTOCAST_DTYPES[dtype]):
        yield
