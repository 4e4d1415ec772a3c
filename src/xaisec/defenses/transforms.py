"""Small, trigger-agnostic input transformations for explanation-stability checks, batched in torch.

Each transform maps images ``(B,C,H,W)`` in [0,1] to images of the same shape in [0,1] and says how to align
a map of the transformed image back onto the original (only ``shift`` moves pixels). A clean input's
explanation barely changes under them; a backdoor whose trigger is weakened by them (a patch blurred, a filter
quantised, a fixed-position pattern shifted) can flip between its manipulated and its honest map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..validation import check_int, check_number

# JPEG's luminance quantisation table (ITU-T T.81, Annex K), used for every channel
_JPEG_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (n,n): coefficients = D @ block @ D.T."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.float()


def jpeg_like(x: torch.Tensor, quality: int = 50) -> torch.Tensor:
    """JPEG-style lossy compression without entropy coding: per channel, 8x8 block DCT, rounding with the
    luminance table scaled by ``quality`` (1-100, libjpeg's scaling), inverse DCT. Edges are padded by
    replication to a multiple of 8 and cropped back."""
    quality = check_int(quality, "JPEG quality", low=1, high=100)
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    q = ((_JPEG_LUMA * scale + 50) // 100).clamp(min=1).to(device=x.device, dtype=x.dtype) / 255.0
    b, c, h, w = x.shape
    ph, pw = (-h) % 8, (-w) % 8
    xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    hh, ww = xp.shape[-2:]
    blocks = xp.reshape(b, c, hh // 8, 8, ww // 8, 8).transpose(3, 4) - 0.5  # (b,c,nh,nw,8,8), centred
    d = _dct_matrix().to(device=x.device, dtype=x.dtype)
    coef = d @ blocks @ d.T
    coef = torch.round(coef / q) * q
    out = (d.T @ coef @ d + 0.5).transpose(3, 4).reshape(b, c, hh, ww)
    return out[..., :h, :w].clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float = 0.8) -> torch.Tensor:
    """Separable Gaussian blur (kernel radius ceil(2 sigma)), reflection padding."""
    sigma = check_number(sigma, "blur sigma", low=0, low_open=True, high=100)
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-t**2 / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < radius:
        raise ConfigError(f"blur sigma {sigma} is too large for {tuple(x.shape[-2:])} images")
    y = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate by (dy, dx) pixels (``out[i, j] = x[i - dy, j - dx]``), replicating the border into the
    uncovered strip."""
    h, w = x.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        raise ConfigError(f"shift ({dy}, {dx}) is larger than the {h}x{w} images")
    rows = (torch.arange(h, device=x.device) - dy).clamp(0, h - 1)
    cols = (torch.arange(w, device=x.device) - dx).clamp(0, w - 1)
    return x[..., rows, :][..., cols]


@dataclass(frozen=True)
class Transform:
    """``apply(x, generator) -> x_t``; ``align(maps_t) -> maps`` maps of ``x_t`` back onto ``x``'s pixel grid."""

    name: str
    apply: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    align: Callable[[torch.Tensor], torch.Tensor] = lambda m: m


def build_transform(name: str, strength: float | None = None) -> Transform:
    """``noise`` (Gaussian, std ``strength``=0.03), ``blur`` (sigma 0.8), ``jpeg`` (quality 50), ``shift``
    (2 pixels down and right; maps are shifted back), ``quantize`` (``strength``=8 grey levels)."""
    if strength is not None and name in ("jpeg", "shift", "quantize"):
        strength = check_int(strength, f"{name} transform strength", low={"jpeg": 1, "shift": -64, "quantize": 2}[name],
                             high={"jpeg": 100, "shift": 64, "quantize": 65536}[name])
    elif strength is not None:
        strength = check_number(strength, f"{name} transform strength", low=0, low_open=name == "blur", high=100)
    if name == "noise":
        std = 0.03 if strength is None else strength
        return Transform(name, lambda x, g: (x + std * torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)).clamp(0, 1))
    if name == "blur":
        sigma = 0.8 if strength is None else strength
        return Transform(name, lambda x, g: gaussian_blur(x, sigma))
    if name == "jpeg":
        quality = 50 if strength is None else int(strength)
        return Transform(name, lambda x, g: jpeg_like(x, quality))
    if name == "shift":
        s = 2 if strength is None else int(strength)
        return Transform(name, lambda x, g: shift(x, s, s), lambda m: shift(m, -s, -s))
    if name == "quantize":
        levels = 8 if strength is None else int(strength)
        return Transform(name, lambda x, g: torch.round(x * (levels - 1)) / (levels - 1))
    raise ConfigError(f"unknown transform {name!r}; use one of {TRANSFORM_NAMES}")


TRANSFORM_NAMES = ("noise", "blur", "jpeg", "shift", "quantize")
