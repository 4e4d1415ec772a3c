"""Input checks shared by explainers, attacks, defenses and data loaders.

Each check raises :class:`~xaisec.errors.XaisecError` with the problem and the fix.
"""
from __future__ import annotations

import math

import torch

from .errors import DataError


def check_images(x: torch.Tensor, name: str = "x", *, allow_flat: bool = False) -> torch.Tensor:
    """Check a batch of images ``(B,C,H,W)`` (or features ``(B,F)`` if ``allow_flat``) in [0,1]."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name} must be a torch.Tensor, got {type(x).__name__}; convert with torch.as_tensor(...)")
    if not x.is_floating_point():
        raise DataError(f"{name} has dtype {x.dtype}; images must be floats in [0,1] (divide uint8 pixels by 255)")
    dims = (2, 4) if allow_flat else (4,)
    if x.dim() not in dims:
        want = "(B,C,H,W) images or (B,F) features" if allow_flat else "(B,C,H,W) images"
        hint = " Add a batch dimension with x.unsqueeze(0)." if x.dim() == 3 else ""
        raise DataError(f"{name} has shape {tuple(x.shape)}; expected {want}.{hint}")
    if x.shape[0] == 0:
        raise DataError(f"{name} is an empty batch")
    with torch.no_grad():
        lo, hi = torch.aminmax(x)  # one pass: NaN and inf propagate into the extremes
        lo, hi = lo.item(), hi.item()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise DataError(f"{name} contains NaN or inf values; clean the data before explaining or attacking it")
    if x.dim() == 4 and (lo < 0 or hi > 1):
        raise DataError(
            f"{name} has values in [{lo:.9g}, {hi:.9g}]; xaisec works on pixels in [0,1] "
            "and models carry their own normalisation as their first layer (see xaisec.models.Normalize)"
        )
    return x


def check_labels(y: torch.Tensor, num_classes: int, name: str = "y", batch: int | None = None) -> torch.Tensor:
    """Check integer class labels ``(B,)`` in ``[0, num_classes)``."""
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.dim() != 1 or (batch is not None and y.shape[0] != batch):
        want = f"({batch},)" if batch is not None else "(B,)"
        raise DataError(f"{name} has shape {tuple(y.shape)}; expected {want}")
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(
            f"{name} has labels in [{y.min().item()}, {y.max().item()}], outside the {num_classes} classes [0, {num_classes - 1}]"
        )
    return y.long()
