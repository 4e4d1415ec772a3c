"""Feature squeezing (Xu, Evans, Qi, NDSS 2018, https://arxiv.org/abs/1704.01155) as an adversarial-input detector.

Squeezers (all ``(B,C,H,W) -> (B,C,H,W)`` in [0,1], differentiable so an adaptive attack can
optimise through them, as the ADV² adaptive attack does):

* :class:`BitDepth`: ``round(x * (2^bits - 1)) / (2^bits - 1)``, the numbers of ART's
  ``FeatureSqueezing``; gradient by straight-through (identity).
* :class:`MedianFilter`: ``size x size`` median per channel, exactly ``scipy.ndimage.median_filter``
  with ``mode="reflect"`` as used by Xu et al.'s code and ART's ``SpatialSmoothing``: for even
  sizes the window covers offsets ``[-size//2, size//2 - 1]`` (the centre is its lower-right
  pixel) and the value of rank ``size²//2`` (the upper median) is taken; borders are padded
  symmetrically (``d c b a | a b c d``). Gradient flows to the selected pixel.
* :class:`NonLocalMeans`: Buades et al.'s non-local means with a uniform ``patch x patch`` kernel,
  a ``search x search`` window, weights ``exp(-max(d² - 2 sigma², 0) / h²)`` where ``d²`` is the
  mean squared difference over the patch and channels, mirror padding. Xu et al.'s "11-3-4"
  (OpenCV, 0-255 scale) is ``NonLocalMeans(search=11, patch=3, h=4/255)``.

:class:`FeatureSqueezingDetector`: score = max over squeezers of the L1 distance between the
softmax outputs on ``x`` and on the squeezed ``x``; ``fit`` sets the threshold at the 95th
percentile of benign scores (5% false positives), as in ADV²'s evaluation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, XaisecError
from ..registry import Registry
from ..validation import check_images, check_int, check_number
from .registry import DEFENSES

SQUEEZERS = Registry("squeezer")
Squeezer = Callable[[torch.Tensor], torch.Tensor]


def _pad_index(n: int, before: int, after: int, mode: str, device: torch.device) -> torch.Tensor:
    """Source indices for padding a length-``n`` axis: ``symmetric`` (scipy 'reflect') or ``mirror``."""
    i = torch.arange(-before, n + after, device=device)
    if mode == "symmetric":
        j = i.remainder(2 * n)
        return torch.where(j >= n, 2 * n - 1 - j, j)
    if n == 1:
        return torch.zeros_like(i)
    j = i.remainder(2 * n - 2)
    return torch.where(j >= n, 2 * n - 2 - j, j)


def _pad(x: torch.Tensor, before: int, after: int, mode: str) -> torch.Tensor:
    rows = _pad_index(x.shape[-2], before, after, mode, x.device)
    cols = _pad_index(x.shape[-1], before, after, mode, x.device)
    return x[..., rows, :][..., cols]


@SQUEEZERS.register("bit_depth")
@dataclass(frozen=True)
class BitDepth:
    """Reduce every channel to ``bits`` bits (ART ``FeatureSqueezing(clip_values=(0, 1), bit_depth=bits)``)."""

    bits: int = 5

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 64:
            raise ConfigError(f"bit depth must be an integer in [1, 64], got {self.bits!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        levels = float(2**self.bits - 1)
        # float64 then back, like ART (numpy promotes to float64), so ties round identically (half to even).
        q = (torch.round(x.detach().double() * levels) / levels).to(x.dtype)
        return x + (q - x).detach()  # straight-through gradient

    @property
    def name(self) -> str:
        return f"bit_depth_{self.bits}"


@SQUEEZERS.register("median")
@dataclass(frozen=True)
class MedianFilter:
    """``size x size`` median per channel, scipy/ART/Xu et al. semantics (see module docstring)."""

    size: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"median filter size must be a positive integer, got {self.size!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        k = self.size
        if k == 1:
            return x
        xp = _pad(x, k // 2, k - 1 - k // 2, "symmetric")
        windows = xp.unfold(2, k, 1).unfold(3, k, 1).flatten(-2)  # (B,C,H,W,k*k)
        return windows.kthvalue(k * k // 2 + 1, dim=-1).values

    @property
    def name(self) -> str:
        return f"median_{self.size}x{self.size}"


@SQUEEZERS.register("nl_means")
@dataclass(frozen=True)
class NonLocalMeans:
    """Non-local means, batched over shifts of the search window (one pass per shift, all images at once)."""

    search: int = 11
    patch: int = 3
    h: float = 4 / 255
    sigma: float = 0.0

    def __post_init__(self) -> None:
        for field in ("search", "patch"):
            v = getattr(self, field)
            if not isinstance(v, int) or v < 1 or v % 2 == 0:
                raise ConfigError(f"nl_means {field} window must be a positive odd integer, got {v!r}")
        if not (math.isfinite(self.h) and math.isfinite(self.sigma)) or self.h <= 0 or self.sigma < 0:
            raise ConfigError(f"nl_means needs h > 0 and sigma >= 0, got h={self.h}, sigma={self.sigma}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rs, rp = self.search // 2, self.patch // 2
        h, w = x.shape[-2:]
        xp = _pad(x, rs + rp, rs + rp, "mirror")
        centre = xp[..., rs:rs + h + 2 * rp, rs:rs + w + 2 * rp]
        num = torch.zeros_like(x)
        den = x.new_zeros((x.shape[0], 1, h, w))
        for dy in range(-rs, rs + 1):
            for dx in range(-rs, rs + 1):
                moved = xp[..., rs + dy:rs + dy + h + 2 * rp, rs + dx:rs + dx + w + 2 * rp]
                d2 = F.avg_pool2d((centre - moved).square().mean(1, keepdim=True), self.patch, stride=1)
                weight = torch.exp(-(d2 - 2 * self.sigma**2).clamp_min(0) / self.h**2)
                num = num + weight * moved[..., rp:rp + h, rp:rp + w]
                den = den + weight
        return num / den

    @property
    def name(self) -> str:
        return f"nl_means_{self.search}-{self.patch}-{self.h * 255:g}"


# Xu et al.'s joint-detection squeezers per dataset (their Table 5), and ADV²'s single squeezers (Table 4).
XU_SQUEEZERS: dict[str, list[Squeezer]] = {
    "mnist": [BitDepth(1), MedianFilter(2), MedianFilter(3)],
    "cifar10": [BitDepth(5), MedianFilter(2), NonLocalMeans(13, 3, 2 / 255)],
    "imagenet": [BitDepth(5), MedianFilter(2), NonLocalMeans(11, 3, 4 / 255)],
}
ADV2_SQUEEZERS: list[Squeezer] = [BitDepth(2), BitDepth(3), MedianFilter(3), NonLocalMeans(11, 3, 4 / 255)]


def build_squeezers(squeezers: Sequence[Any] | str | None) -> list[Squeezer]:
    """Squeezers from names, ``(name, kwargs)`` pairs, callables, or a preset name
    (``"mnist"``, ``"cifar10"``, ``"imagenet"``, ``"adv2"``); ``None`` = the ADV² set."""
    if squeezers is None or squeezers == "adv2":
        return list(ADV2_SQUEEZERS)
    if isinstance(squeezers, str):
        if squeezers in XU_SQUEEZERS:
            return list(XU_SQUEEZERS[squeezers])
        return [SQUEEZERS.build(squeezers)]
    out: list[Squeezer] = []
    for item in squeezers:
        if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
            out.append(SQUEEZERS.get(item[0])(**dict(item[1])))
        elif isinstance(item, str) or callable(item):
            out.append(SQUEEZERS.build(item))
        else:
            raise ConfigError(f"cannot use {item!r} as a squeezer: give a name, (name, kwargs) or a callable")
    if not out:
        raise ConfigError("feature squeezing needs at least one squeezer")
    return out


def _squeezer_name(squeezer: Squeezer) -> str:
    return getattr(squeezer, "name", getattr(squeezer, "__name__", type(squeezer).__name__))


def squeeze_gaps(model: nn.Module, x: torch.Tensor, squeezers: Sequence[Squeezer]) -> torch.Tensor:
    """L1 distances between softmax outputs on ``x`` and on each squeezed ``x``: (B, n_squeezers)."""
    p = model(x).softmax(1)
    return torch.stack([(p - model(sq(x)).softmax(1)).abs().sum(1) for sq in squeezers], 1)


def squeeze_consistency_loss(model: nn.Module, x: torch.Tensor, squeezers: Sequence[Any] | str | None = None
                             ) -> torch.Tensor:
    """Sum over squeezers of the L1 softmax gaps (B,), differentiable w.r.t. ``x`` (adaptive ADV² term)."""
    check_images(x)
    return squeeze_gaps(model, x, build_squeezers(squeezers)).sum(1)


@DEFENSES.register("feature_squeezing")
class FeatureSqueezingDetector:
    """Flags inputs whose prediction moves too much under squeezing; higher score = more suspicious.

    ``model`` maps images in [0,1] to logits. ``fpr`` is the benign false-positive rate that
    ``fit`` calibrates (0.05: threshold = 95th percentile of benign scores).
    """

    def __init__(self, model: nn.Module, squeezers: Sequence[Any] | str | None = None, fpr: float = 0.05,
                 batch_size: int = 256):
        fpr = check_number(fpr, "fpr", low=0, high=1, low_open=True, high_open=True)
        batch_size = check_int(batch_size, "batch_size", low=1)
        self.model, self.squeezers = model, build_squeezers(squeezers)
        self.fpr, self.batch_size = fpr, batch_size
        self.threshold: float | None = None

    @property
    def squeezer_names(self) -> list[str]:
        return [_squeezer_name(s) for s in self.squeezers]

    @torch.no_grad()
    def gaps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-squeezer L1 gaps (B, n_squeezers), in eval mode (the model's mode is restored)."""
        check_images(x)
        was_training = self.model.training
        self.model.eval()
        try:
            return torch.cat([squeeze_gaps(self.model, xb, self.squeezers) for xb in x.split(self.batch_size)])
        finally:
            self.model.train(was_training)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Max over squeezers of the L1 softmax gap (B,), in [0, 2]."""
        return self.gaps(x).amax(1)

    def fit(self, x_benign: torch.Tensor) -> "FeatureSqueezingDetector":
        """Threshold = (1 - fpr) quantile of the benign scores (linear interpolation, as numpy)."""
        self.threshold = float(torch.quantile(self.score(x_benign).double(), 1 - self.fpr))
        return self

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """Bool (B,): score above the fitted threshold."""
        if self.threshold is None:
            raise XaisecError("FeatureSqueezingDetector is not fitted: call fit(x_benign) first")
        return self.score(x) > self.threshold
