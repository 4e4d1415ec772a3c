"""The :class:`Trigger` base class and the geometry/colour helpers the triggers share.

A trigger is a batched ``nn.Module``: ``(B,C,H,W)`` floats in [0,1] in, the same shape, dtype and range out,
deterministic for a given seed. ``mask(shape)`` tells which pixels it touches, so that metrics can check whether
an explanation points at the trigger.
"""
from __future__ import annotations

import abc
import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..registry import Registry
from ..validation import check_images

# ITU-R BT.601 luma weights: the same ones PIL uses for RGB -> "L".
LUMA = (0.299, 0.587, 0.114)
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right", "center")

Position = Union[str, Sequence[int]]
Size = Union[int, float, Sequence[Union[int, float]]]
Colour = Union[float, Sequence[float]]


#: every trigger, registered with ``@TRIGGERS.register()`` in the file that defines it (its ``name`` attribute)
TRIGGERS = Registry("trigger")


class Trigger(nn.Module, abc.ABC):
    """Base class: ``forward`` validates ``x`` and clamps the result; subclasses implement :meth:`stamp`."""

    name: str = "trigger"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the trigger to ``x`` ``(B,C,H,W)`` in [0,1]; returns ``(B,C,H,W)`` in [0,1], same dtype."""
        check_images(x, "x")
        return self.stamp(x).clamp(0.0, 1.0)

    @abc.abstractmethod
    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """The trigger's operation on a checked batch (the result is clamped by ``forward``)."""

    def mask(self, shape: Sequence[int]) -> torch.Tensor:
        """Bool ``(1,1,H,W)``: the pixels this trigger changes on inputs of ``shape`` (``(...,H,W)``).

        Global triggers (filters, blends, overlays) touch the whole image, which is this default.
        """
        h, w = image_size(shape)
        return torch.ones(1, 1, h, w, dtype=torch.bool)

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for reports, e.g. ``"patch: 3x3 square of colour (1.0) at bottom_right"``."""

    def extra_repr(self) -> str:
        return self.describe()


def image_size(shape: Sequence[int] | torch.Size) -> tuple[int, int]:
    """``(H, W)`` from a shape ``(...,H,W)``; a shape with fewer than two entries is an error."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape[-2:]) < 1:
        raise DataError(f"shape {shape} is not an image shape; pass (B,C,H,W), (C,H,W) or (H,W)")
    return shape[-2], shape[-1]


def check_fraction(value: float, what: str, *, low_open: bool = False) -> float:
    """``value`` as a float in [0,1] (or (0,1] if ``low_open``), else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a number in [0, 1], got {value!r}")
    if not (0 < value <= 1 if low_open else 0 <= value <= 1):
        raise ConfigError(f"{what} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")
    return float(value)


def parse_colour(colour: Colour, what: str = "colour") -> tuple[float, ...]:
    """A colour as a tuple of 1 (gray) or 3 (RGB) values in [0,1]."""
    values = (colour,) if isinstance(colour, (int, float)) and not isinstance(colour, bool) else colour
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number or a sequence of 3 numbers in [0,1], got {colour!r}") from None
    if len(values) not in (1, 3):
        raise ConfigError(f"{what} must have 1 (gray) or 3 (RGB) values, got {len(values)}: {colour!r}")
    if not all(0 <= v <= 1 for v in values):
        raise ConfigError(f"{what} values must be in [0,1] (divide 0-255 values by 255), got {colour!r}")
    return values


def colour_tensor(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """``(1,C,1,1)`` colour for a batch ``like`` of C channels; RGB on 1 channel becomes its luma."""
    channels = like.shape[1]
    if len(values) == 3 and channels == 1:
        values = (sum(w * v for w, v in zip(LUMA, values)),)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise DataError(f"an RGB colour {values} does not fit images with {channels} channels; give a single gray value")
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, channels, 1, 1)


def match_channels(image: torch.Tensor, channels: int, what: str) -> torch.Tensor:
    """Adapt a ``(1,c,h,w)`` pattern to ``channels``: gray is replicated, RGB on gray inputs becomes luma."""
    c = image.shape[1]
    if c == channels:
        return image
    if c == 1:
        return image.expand(-1, channels, -1, -1)
    if c == 3 and channels == 1:
        weights = torch.tensor(LUMA, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        return (image * weights).sum(1, keepdim=True)
    raise DataError(f"{what} has {c} channels and cannot be applied to {channels}-channel images; "
                    "give a gray (1-channel) or matching pattern")


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of ``(1,C,h,w)`` to ``size`` (no-op if already that size)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def parse_size(size: Size, what: str = "size") -> tuple[int | float, int | float]:
    """``(h, w)``, each a pixel count (int >= 1) or a fraction of the image side (float in (0,1])."""
    pair = (size, size) if isinstance(size, (int, float)) else tuple(size)
    if len(pair) != 2:
        raise ConfigError(f"{what} must be one number or a (height, width) pair, got {size!r}")
    for s in pair:
        ok = (isinstance(s, int) and not isinstance(s, bool) and s >= 1) or (isinstance(s, float) and 0 < s <= 1)
        if not ok:
            raise ConfigError(f"{what} entries must be pixel counts (int >= 1) or fractions of the image side "
                              f"(float in (0,1]), got {size!r}")
    return pair


def pixels_of(size: tuple[int | float, int | float], h: int, w: int) -> tuple[int, int]:
    """Resolve a parsed size against an ``h`` x ``w`` image (fractions round, at least one pixel)."""
    return tuple(s if isinstance(s, int) else max(1, round(s * side)) for s, side in zip(size, (h, w)))


def parse_position(position: Position) -> str | tuple[int, int]:
    """A corner name (``top_left`` ... ``center``) or a ``(row, col)`` pair of ints >= 0 (the top-left pixel)."""
    if isinstance(position, str):
        key = position.lower().replace("-", "_").replace(" ", "_")
        if key == "centre":
            key = "center"
        if key not in CORNERS:
            raise ConfigError(f"position {position!r} is not one of {', '.join(CORNERS)} nor a (row, col) pair")
        return key
    try:
        row, col = position
    except (TypeError, ValueError):
        raise ConfigError(f"position must be a corner name or a (row, col) pair, got {position!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (row, col)):
        raise ConfigError(f"position (row, col) must be two ints >= 0 (the box's top-left pixel), got {position!r}")
    return row, col


def place_box(position: str | tuple[int, int], box: tuple[int, int], image: tuple[int, int], margin: int,
              what: str) -> tuple[int, int]:
    """Top-left ``(row, col)`` of a ``box`` placed at ``position`` in ``image``; DataError if it does not fit."""
    (bh, bw), (h, w) = box, image
    if isinstance(position, tuple):
        top, left = position
    else:
        rows = {"top": margin, "bottom": h - bh - margin, "center": (h - bh) // 2}
        cols = {"left": margin, "right": w - bw - margin, "center": (w - bw) // 2}
        vertical, _, horizontal = position.partition("_")
        top, left = rows[vertical], cols[horizontal or "center"]
    if top < 0 or left < 0 or top + bh > h or left + bw > w:
        raise DataError(f"{what} of size {bh}x{bw} at {position!r} (margin {margin}) does not fit a {h}x{w} image; "
                        "make it smaller or move it")
    return top, left


def box_mask(top: int, left: int, box: tuple[int, int], image: tuple[int, int]) -> torch.Tensor:
    """Bool ``(1,1,H,W)``, True inside the box."""
    mask = torch.zeros(1, 1, *image, dtype=torch.bool)
    mask[..., top:top + box[0], left:left + box[1]] = True
    return mask


def check_margin(margin: int) -> int:
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ConfigError(f"margin must be an int >= 0 (pixels from the border), got {margin!r}")
    return margin


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    return seed
