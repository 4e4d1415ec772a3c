"""Saliency-map post-processing and distances.

Every paper normalises maps differently, and results are only comparable under the same choice, so the
pipeline is explicit: :class:`MapPostprocess` (ReLU? -> average pooling -> normalisation), with
:meth:`MapPostprocess.describe` for reports. Maps are ``(B,1,H,W)`` (or ``(B,F)``); distances return ``(B,)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError
from .validation import check_int, check_number

NORMALISATIONS = ("minmax", "max", "zscore", "none")
DISTANCES = ("mse", "l1", "l2", "dssim")


def _flat(maps: torch.Tensor) -> torch.Tensor:
    return maps.reshape(maps.shape[0], -1)


def check_maps(maps: torch.Tensor, name: str = "maps") -> torch.Tensor:
    """Raise :class:`DataError` unless ``maps`` is a non-empty float tensor ``(B,...)`` of finite values (the value
    scan is skipped for maps inside an autograd graph: no device sync in training and attack loops, whose loss check
    catches non-finite values)."""
    if not isinstance(maps, torch.Tensor):
        raise DataError(f"{name} must be a torch.Tensor of shape (B,1,H,W) or (B,F), got {type(maps).__name__}")
    if not maps.is_floating_point():
        raise DataError(f"{name} must be a float tensor, got dtype {maps.dtype}; convert with .float()")
    if maps.dim() < 2 or maps.numel() == 0:
        raise DataError(f"{name} has shape {tuple(maps.shape)}; expected non-empty (B,1,H,W) maps or (B,F) vectors")
    if not maps.requires_grad and not bool(torch.isfinite(maps).all()):  # graph maps: training checks its loss
        raise DataError(f"{name} contains NaN or inf values; maps must be finite")
    return maps


def normalize(maps: torch.Tensor, how: str = "minmax", eps: float = 1e-8) -> torch.Tensor:
    """Per-map normalisation: ``minmax`` to [0,1]; ``max`` divides by the max |value|; ``zscore``
    is ``(m - mean) / sqrt(var + 1e-5)`` (Noppel et al.); ``none`` returns the maps unchanged."""
    if how not in NORMALISATIONS:
        raise ConfigError(f"unknown map normalisation {how!r}; use one of {NORMALISATIONS}")
    check_maps(maps)
    eps = check_number(eps, "eps", low=0, low_open=True)
    if how == "none":
        return maps
    flat = _flat(maps)
    shape = (-1,) + (1,) * (maps.dim() - 1)
    if how == "minmax":
        lo, hi = flat.amin(1).view(shape), flat.amax(1).view(shape)
        return (maps - lo) / (hi - lo + eps)
    if how == "max":
        return maps / (flat.abs().amax(1).view(shape) + eps)
    if how == "zscore":
        return (maps - flat.mean(1).view(shape)) / torch.sqrt(flat.var(1, unbiased=False).view(shape) + 1e-5)
    raise ConfigError(f"unknown map normalisation {how!r}; use one of {NORMALISATIONS}")


def downsample(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """Average-pool ``(B,1,H,W)`` maps by ``kernel`` (Fang & Choromanska train on pooled maps)."""
    kernel = check_int(kernel, "pooling kernel", low=1)
    check_maps(maps)
    if kernel == 1:
        return maps
    if maps.dim() != 4:
        raise DataError(f"downsample needs (B,1,H,W) maps, got shape {tuple(maps.shape)}")
    if maps.shape[-1] < kernel or maps.shape[-2] < kernel:
        raise ConfigError(f"pooling kernel {kernel} is larger than the {tuple(maps.shape[-2:])} maps")
    return F.avg_pool2d(maps, kernel)


@dataclass(frozen=True)
class MapPostprocess:
    """``relu`` (drop negative evidence) -> ``pool`` (average pooling kernel, 1 = none) -> ``norm`` (with ``eps``
    in the denominator). The one map post-processing of xaisec: losses, metrics and figures all use it."""

    relu: bool = False
    pool: int = 1
    norm: str = "minmax"
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.norm not in NORMALISATIONS:
            raise ConfigError(f"unknown map normalisation {self.norm!r}; use one of {NORMALISATIONS}")
        check_int(self.pool, "map pooling kernel", low=1)
        if not isinstance(self.relu, bool):
            raise ConfigError(f"map post-processing relu must be True or False, got {self.relu!r}")

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        maps = F.relu(check_maps(maps)) if self.relu else check_maps(maps)
        return normalize(downsample(maps, self.pool), self.norm, eps=self.eps)

    def describe(self) -> str:
        steps = (["ReLU"] if self.relu else []) + ([f"{self.pool}x{self.pool} average pooling"] if self.pool > 1 else [])
        steps.append({"minmax": "min-max scaling to [0,1]", "max": "division by the max |value|",
                      "zscore": "z-score per map", "none": "no normalisation"}[self.norm])
        return ", then ".join(steps)


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) per map pair ``(B,)``, Gaussian window (shrunk to fit small maps), valid region."""
    check_maps(a, "ssim input a"), check_maps(b, "ssim input b")
    if a.shape != b.shape or a.dim() != 4:
        raise DataError(f"ssim needs two (B,1,H,W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    window = check_int(window, "ssim window", low=1)
    sigma = check_number(sigma, "ssim sigma", low=0, low_open=True)
    data_range = check_number(data_range, "ssim data_range", low=0, low_open=True)
    size = min(window, a.shape[-1], a.shape[-2])
    size -= (size + 1) % 2  # odd
    w = _gaussian_window(size, sigma * size / window, a.dtype, a.device).expand(a.shape[1], 1, size, size)
    conv = lambda t: F.conv2d(t, w, groups=a.shape[1])  # noqa: E731
    mu_a, mu_b = conv(a), conv(b)
    var_a, var_b, cov = conv(a * a) - mu_a**2, conv(b * b) - mu_b**2, conv(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def distance(a: torch.Tensor, b: torch.Tensor, metric: str = "mse") -> torch.Tensor:
    """Per-pair distance ``(B,)``: ``mse``; ``l1`` = L1/(H*W); ``l2`` = L2/sqrt(H*W) (ADV2's conventions);
    ``dssim`` = (1 - SSIM)/2 (Noppel et al.; inputs should be in [0,1])."""
    if metric not in DISTANCES:
        raise ConfigError(f"unknown map distance {metric!r}; use one of {DISTANCES}")
    check_maps(a, "first maps"), check_maps(b, "second maps")
    if a.shape != b.shape:
        raise DataError(f"maps to compare have different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    diff = _flat(a - b)
    if metric == "mse":
        return diff.pow(2).mean(1)
    if metric == "l1":
        return diff.abs().mean(1)
    if metric == "l2":
        return diff.pow(2).sum(1).sqrt() / diff.shape[1] ** 0.5
    if metric == "dssim":
        return (1 - ssim(a, b)) / 2
    raise ConfigError(f"unknown map distance {metric!r}; use one of {DISTANCES}")


def topk_mask(maps: torch.Tensor, k: int | float) -> torch.Tensor:
    """Boolean mask of each map's ``k`` largest pixels (``k`` < 1: a fraction of the pixels)."""
    flat = _flat(check_maps(maps))
    k = check_number(k, "top-k k (a fraction < 1 of the pixels, or a pixel count)", low=0, low_open=True)
    if k >= 1 and not k.is_integer():
        raise ConfigError(f"top-k needs a fraction in (0, 1) or a whole number of pixels, got k={k}")
    n = int(round(k * flat.shape[1])) if k < 1 else int(k)
    if not 1 <= n <= flat.shape[1]:
        raise ConfigError(f"top-k needs 1 <= k <= {flat.shape[1]} pixels, got k={k}")
    idx = flat.topk(n, dim=1).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
    return mask.view_as(maps)


def topk_iou(a: torch.Tensor, b: torch.Tensor, k: int | float) -> torch.Tensor:
    """Intersection over union of the top-``k`` pixels of two maps ``(B,)`` (ADV2's IoU test)."""
    if a.shape != b.shape:
        raise DataError(f"maps to compare have different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    ma, mb = _flat(topk_mask(a, k)), _flat(topk_mask(b, k))
    return (ma & mb).sum(1).float() / (ma | mb).sum(1).float()
