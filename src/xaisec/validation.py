"""Input checks shared by explainers, attacks, defenses and data loaders.

Each check raises :class:`~xaisec.errors.XaisecError` with the problem and the fix.
"""
from __future__ import annotations

import itertools
import math
import operator
import warnings
from collections.abc import Hashable

import torch

from .errors import ConfigError, DataError, ModelError, XaisecError


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
    if x.numel() == 0:
        raise DataError(f"{name} has shape {tuple(x.shape)}: a size-0 dimension; every image needs channels and pixels")
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
    if isinstance(y, (str, bytes)):
        raise DataError(f"{name} must be a (B,) tensor of integer class indices, got {y!r}")
    if not isinstance(y, torch.Tensor):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError):
            raise DataError(f"{name} must be a (B,) tensor of integer class indices, got {type(y).__name__}") from None
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.dim() != 1 or (batch is not None and y.shape[0] != batch):
        want = f"({batch},)" if batch is not None else "(B,)"
        raise DataError(f"{name} has shape {tuple(y.shape)}; expected {want}")
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(
            f"{name} has labels in [{y.min().item()}, {y.max().item()}], outside the {num_classes} classes [0, {num_classes - 1}]"
        )
    return y.long()


def _describe_range(low, high, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return "a finite number"
    if high is None:
        return f"a finite number {'>' if low_open else '>='} {low}"
    if low is None:
        return f"a finite number {'<' if high_open else '<='} {high}"
    return f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def check_number(value, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, error: type[XaisecError] = ConfigError) -> float:
    """``value`` as a finite float in the given range; NaN, inf, bools, strings and tensors of several
    elements raise ``error`` naming ``name``, the value and the accepted range."""
    want = _describe_range(low, high, low_open, high_open)
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise error(f"{name} must be {want}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise error(f"{name} must be {want}, got {value!r} ({type(value).__name__})") from None
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or too_low or too_high:
        raise error(f"{name} must be {want}, got {value!r}")
    return number


def check_int(value, name: str, *, low: int | None = None, high: int | None = None,
              error: type[XaisecError] = ConfigError) -> int:
    """``value`` as an int in ``[low, high]``: ints and integer numpy/torch scalars are accepted, floats
    (even ``3.0``), bools, NaN and strings raise ``error`` naming ``name``, the value and the accepted range."""
    want = ("an int" + (f" >= {low}" if low is not None and high is None else "")
            + (f" in [{low}, {high}]" if low is not None and high is not None else "")
            + (f" <= {high}" if low is None and high is not None else ""))
    if isinstance(value, bool):
        raise error(f"{name} must be {want}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise error(f"{name} must be {want}, got {value!r} ({type(value).__name__})") from None
    if (low is not None and number < low) or (high is not None and number > high):
        raise error(f"{name} must be {want}, got {number}")
    return number


def check_choice(value, name: str, choices, error: type[XaisecError] = ConfigError):
    """``value`` if it is one of ``choices``; otherwise ``error`` listing them."""
    if not isinstance(value, Hashable) or value not in tuple(choices):
        raise error(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_finite(t: torch.Tensor, name: str, error: type[XaisecError] = DataError) -> torch.Tensor:
    """Raise ``error`` if the tensor ``t`` is not a float/int tensor or holds NaN or inf."""
    if not isinstance(t, torch.Tensor):
        raise error(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype in (torch.bool,) or t.is_complex():
        raise error(f"{name} must be a real-valued tensor, got dtype {t.dtype}")
    if t.numel() and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise error(f"{name} holds {bad} NaN or inf value(s) out of {t.numel()}; every value must be finite")
    return t


def model_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter (or buffer); None if it has none."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def match_model_dtype(x: torch.Tensor, model: torch.nn.Module, name: str = "x") -> torch.Tensor:
    """``x`` cast to the model's floating dtype when they differ (float64 images for a float32 model), with a
    warning saying so: explainers and attacks return maps and images in the model's dtype."""
    dtype = model_dtype(model)
    if dtype is None or x.dtype == dtype:
        return x
    warnings.warn(f"{name} has dtype {x.dtype} but the model computes in {dtype}: {name} is cast to {dtype} "
                  f"and results come back in {dtype}", DtypeCastWarning, stacklevel=3)
    return x.to(dtype)


class DtypeCastWarning(UserWarning):
    """Inputs were cast to the model's dtype (see :func:`match_model_dtype`)."""


def model_logits(model: torch.nn.Module, x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """``model(x)``, checked to be logits ``(B, classes)``. A RuntimeError inside the model (most often inputs of
    the wrong channel count or size for its layers) becomes a :class:`~xaisec.errors.DataError` naming the input
    shape and carrying the model's message, chained to the original. Out-of-memory errors pass through."""
    try:
        logits = model(x)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"the model failed on {name} of shape {tuple(x.shape)}: {first}. If that shape or channel "
                        "count is not what the model was built for, give inputs that match it") from exc
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ModelError(f"the model must return logits of shape (B, classes), got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    return logits
