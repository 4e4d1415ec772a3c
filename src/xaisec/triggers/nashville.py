"""The Instagram "nashville" photo filter as batched torch ops (Fang & Choromanska, AAAI 2022: the Birds trigger).

The reference is ``pilgram.nashville`` (CSSgram's recipe on 8-bit PIL images), in this order:

1. darken blend with the colour (247,176,153) at opacity 0.56,
2. lighten blend with the colour (0,70,150) at opacity 0.4,
3. sepia 0.2, contrast 1.2, brightness 1.05, saturate 1.2 (the W3C filter-effects matrices).

pilgram stores each layer's opacity in 8 bits (0.56 -> 143/255, 0.4 -> 102/255), composites with PIL's truncating
multiply and rounds after every step. With ``quantize=True`` (default) the forward pass repeats that 8-bit
pipeline exactly (the input is rounded to 1/255 steps first) and the gradient is the one of the smooth float
pipeline (straight-through); with ``quantize=False`` the output is the smooth pipeline itself (it models
PIL's truncation by its mean, one level per blend): over all 2^24 RGB colours it is within 3.7/255 of
pilgram (mean 0.7/255), while the 8-bit emulation is exact (up to float rounding, < 1e-5/255).

1-channel input: the gray image is replicated to RGB, filtered, and converted back with the ITU-R 601 luma
weights (0.299, 0.587, 0.114), as PIL's ``convert("L")`` does, so it matches
``pilgram.nashville(gray_image).convert("L")``.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError, DataError
from .base import LUMA, TRIGGERS, Trigger

_DARKEN = ((247, 176, 153), 143)  # (colour, 8-bit opacity = round(0.56 * 255))
_LIGHTEN = ((0, 70, 150), 102)  # round(0.4 * 255)
_CONTRAST, _BRIGHTNESS = 1.2, 1.05


def _sepia(amount: float) -> list[list[float]]:
    s = 1 - min(amount, 1.0)
    return [[0.393 + 0.607 * s, 0.769 - 0.769 * s, 0.189 - 0.189 * s],
            [0.349 - 0.349 * s, 0.686 + 0.314 * s, 0.168 - 0.168 * s],
            [0.272 - 0.272 * s, 0.534 - 0.534 * s, 0.131 + 0.869 * s]]


def _saturate(s: float) -> list[list[float]]:
    return [[0.213 + 0.787 * s, 0.715 - 0.715 * s, 0.072 - 0.072 * s],
            [0.213 - 0.213 * s, 0.715 + 0.285 * s, 0.072 - 0.072 * s],
            [0.213 - 0.213 * s, 0.715 - 0.715 * s, 0.072 + 0.928 * s]]


_SEPIA, _SATURATE = _sepia(0.2), _saturate(1.2)


def _lut(fn) -> torch.Tensor:
    # Python's round (half to even) on the 256 levels, clipped as PIL's point() does.
    return torch.tensor([min(max(round(fn(v)), 0), 255) for v in range(256)], dtype=torch.int64)


_CONTRAST_LUT = _lut(lambda v: v * _CONTRAST + -127.5 * _CONTRAST + 127.5)
_BRIGHTNESS_LUT = _lut(lambda v: v * _BRIGHTNESS)


def _channel_matrix(x: torch.Tensor, matrix: list[list[float]]) -> torch.Tensor:
    m = torch.tensor(matrix, dtype=x.dtype, device=x.device)
    return torch.einsum("oc,bchw->bohw", m, x)


def nashville_smooth(x: torch.Tensor) -> torch.Tensor:
    """The filter in float arithmetic, ``(B,3,H,W)`` in [0,1] -> same; differentiable almost everywhere."""
    for (colour, opacity), blend in ((_DARKEN, torch.minimum), (_LIGHTEN, torch.maximum)):
        c = torch.tensor(colour, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255
        a = opacity / 255
        # PIL truncates each of the two products: on average half a level lost per product
        x = (a * blend(x, c) + (1 - a) * x - 1 / 255).clamp(0, 1)
    x = _channel_matrix(x, _SEPIA).clamp(0, 1)
    x = (x * _CONTRAST + 0.5 * (1 - _CONTRAST)).clamp(0, 1)
    x = (x * _BRIGHTNESS).clamp(0, 1)
    return _channel_matrix(x, _SATURATE).clamp(0, 1)


def _matrix_8bit(v: torch.Tensor, matrix: list[list[float]]) -> torch.Tensor:
    """PIL's ``convert("RGB", matrix)``: float32 products and sums, + 0.5, truncation, clip to 0..255."""
    m = torch.tensor(matrix, dtype=torch.float32, device=v.device)
    f = v.to(torch.float32)
    rows = []
    for o in range(3):
        acc = m[o, 0] * f[:, 0]
        acc = acc + m[o, 1] * f[:, 1]
        acc = acc + m[o, 2] * f[:, 2]
        rows.append((acc.double() + 0.5).float())
    return torch.stack(rows, 1).floor().clamp(0, 255).to(torch.int64)


@torch.no_grad()
def nashville_8bit(x: torch.Tensor) -> torch.Tensor:
    """pilgram's 8-bit pipeline on ``(B,3,H,W)`` in [0,1]; returns int64 levels 0..255."""
    v = torch.round(x * 255).to(torch.int64)
    for (colour, opacity), blend in ((_DARKEN, torch.minimum), (_LIGHTEN, torch.maximum)):
        c = torch.tensor(colour, dtype=torch.int64, device=x.device).view(1, 3, 1, 1)
        # PIL's ImageChops.multiply truncates: a*b // 255, and the two terms are added with clipping
        v = ((opacity * blend(v, c)) // 255 + ((255 - opacity) * v) // 255).clamp(0, 255)
    v = _matrix_8bit(v, _SEPIA)
    v = _BRIGHTNESS_LUT.to(v.device)[_CONTRAST_LUT.to(v.device)[v]]
    return _matrix_8bit(v, _SATURATE)


def _luma(x: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _luma_8bit(v: torch.Tensor) -> torch.Tensor:
    # PIL's RGB -> L in fixed point: (19595 R + 38470 G + 7471 B + 0x8000) >> 16
    return (19595 * v[:, :1] + 38470 * v[:, 1:2] + 7471 * v[:, 2:] + 0x8000) >> 16


@TRIGGERS.register()
class Nashville(Trigger):
    """Instagram's nashville filter; a global trigger (its mask is the whole image). See the module docstring."""

    name = "nashville"

    def __init__(self, quantize: bool = True):
        super().__init__()
        if not isinstance(quantize, bool):
            raise ConfigError(f"quantize must be true or false, got {quantize!r}")
        self.quantize = quantize

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        if channels not in (1, 3):
            raise DataError(f"nashville works on 1- or 3-channel images, got {channels} channels")
        rgb = x.expand(-1, 3, -1, -1) if channels == 1 else x
        out = nashville_smooth(rgb)
        if channels == 1:
            out = _luma(out)
        if not self.quantize:
            return out
        levels = nashville_8bit(rgb)
        if channels == 1:
            levels = _luma_8bit(levels)
        exact = levels.to(x.dtype) / 255
        return out + (exact - out).detach()  # 8-bit values forward, smooth gradient backward

    def describe(self) -> str:
        return f"{self.name}: Instagram filter (pilgram recipe){', 8-bit exact' if self.quantize else ', smooth'}"
