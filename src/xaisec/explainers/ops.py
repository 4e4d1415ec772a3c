"""Differentiable image operations shared by the perturbation-based explainers (MASK, RTS)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B,C,H,W)`` with reflect padding (kernel radius ``ceil(2 sigma)``).

    Blurring is a convex combination of pixels, so [0,1] images stay in [0,1].
    """
    if sigma <= 0:
        raise ConfigError(f"blur sigma must be positive, got {sigma}")
    radius = max(1, min(int(math.ceil(2 * sigma)), min(x.shape[-2:]) - 1))
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-coords**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def total_variation(m: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Per-image total variation ``(B,)``: mean of ``|dm/dx|^beta + |dm/dy|^beta`` (Fong & Vedaldi's TV_beta)."""
    dx = (m[..., :, 1:] - m[..., :, :-1]).abs().pow(beta).flatten(1).mean(1)
    dy = (m[..., 1:, :] - m[..., :-1, :]).abs().pow(beta).flatten(1).mean(1)
    return dx + dy


def blend(x: torch.Tensor, alt: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``keep * x + (1 - keep) * alt``: where the mask ``keep`` (B,1,H,W) in [0,1] is 1 the image is kept."""
    return keep * x + (1 - keep) * alt
