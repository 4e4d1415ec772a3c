"""Training-time augmentation as the reference papers used it, batched and seeded.

Small images (32-48 px: CIFAR-10, GTSRB) get a random crop of the zero-padded image (padding 4) and a
horizontal flip, as in the ResNet recipe of He et al. ("Deep Residual Learning for Image Recognition",
CVPR 2016); 224 px images get a random resized crop (scale 0.08-1, aspect 3/4-4/3) and a flip, as in
Szegedy et al. ("Going Deeper with Convolutions", CVPR 2015). :class:`AugmentedBatches` applies it to the
inputs of training batches only, with a generator seeded by ``(seed, epoch, batch)``: independent of the
number of DataLoader workers, and a resumed run sees the same augmented batches. Evaluation never goes
through it (``predict``/``accuracy`` take plain tensors).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .loader import WrappedBatches

CROPS = ("pad", "resized", "none")


@dataclass(frozen=True)
class Augment:
    """A batched augmentation ``(x (B,C,H,W) in [0,1], generator) -> (B,C,H,W)`` in [0,1].

    ``crop``: ``"pad"`` (random ``H x W`` crop of the image zero-padded by ``padding``), ``"resized"`` (random
    crop of ``scale`` of the area and aspect ratio in ``ratio``, resized back bilinearly) or ``"none"``.
    ``flip``: mirror each image left-right with probability 1/2.
    """

    crop: str = "pad"
    padding: int = 4
    flip: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ConfigError(f"augmentation crop must be one of {CROPS}, got {self.crop!r}")
        if isinstance(self.padding, bool) or not isinstance(self.padding, int) or self.padding < 0:
            raise ConfigError(f"augmentation padding must be an int >= 0, got {self.padding!r}")
        for name, (low, high), top in (("scale", self.scale, 1.0), ("ratio", self.ratio, math.inf)):
            if not 0 < low <= high <= top:
                raise ConfigError(f"augmentation {name} must be (low, high) with 0 < low <= high"
                                  f"{' <= 1' if top == 1 else ''}, got {(low, high)}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = len(x)
        flips = (torch.rand(b, generator=generator) < 0.5) if self.flip else torch.zeros(b, dtype=torch.bool)
        if self.crop == "resized":
            return self._resized_crop(x, flips, generator)
        if self.crop == "pad" and self.padding:
            x = self._pad_crop(x, generator)
        flips = flips.to(x.device)[:, None, None, None]
        return torch.where(flips, x.flip(-1), x)

    def _pad_crop(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p))
        top = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
        left = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
        rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B,H,1)
        cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B,1,W)
        return padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)

    def _resized_crop(self, x: torch.Tensor, flips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        tries = 10  # torchvision's RandomResizedCrop: the first of 10 draws that fits, else the whole image
        area = torch.empty(b, tries).uniform_(*self.scale, generator=generator)
        log_ratio = torch.empty(b, tries).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]), generator=generator)
        aspect = log_ratio.exp()
        cw = (area * h * w * aspect).sqrt().round()
        ch = (area * h * w / aspect).sqrt().round()
        fits = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)
        first = fits.float().argmax(1)
        ok = fits.any(1)
        rows = torch.arange(b)
        cw = torch.where(ok, cw[rows, first], torch.tensor(float(w)))
        ch = torch.where(ok, ch[rows, first], torch.tensor(float(h)))
        x0 = (torch.rand(b, generator=generator) * (w - cw + 1)).floor()
        y0 = (torch.rand(b, generator=generator) * (h - ch + 1)).floor()
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = cw / w * torch.where(flips, -1.0, 1.0)
        theta[:, 0, 2] = (2 * x0 + cw) / w - 1
        theta[:, 1, 1] = ch / h
        theta[:, 1, 2] = (2 * y0 + ch) / h - 1
        grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).clamp(0, 1)


def paper_augment(input_shape: tuple[int, ...]) -> Augment:
    """The papers' augmentation for inputs of ``input_shape`` ``(C,H,W)``: pad-crop + flip up to 48 px,
    random resized crop + flip above."""
    return Augment(crop="pad" if max(input_shape[-2:]) <= 48 else "resized")


class AugmentedBatches(WrappedBatches):
    """Training batches ``(x, y, ...)`` with ``augment`` applied to ``x`` (the other tensors untouched); any
    batches object with ``set_epoch`` (``TensorBatches``, ``make_loader``) goes in."""

    def __init__(self, batches, augment: Augment, seed: int = 0):
        super().__init__(batches)
        self.augment, self.seed = augment, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for i, batch in enumerate(self.batches):
            # one stream per (seed, epoch, batch): the same draws however the batches were produced
            generator = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + i) % 2**63)
            yield (self.augment(batch[0], generator), *batch[1:])
