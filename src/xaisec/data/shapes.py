"""``shapes``: deterministic synthetic RGB scenes with a ground-truth mask per object.

One coloured shape (circle, square, triangle, cross) per 32x32 image, on a textured
background (sinusoidal stripes + noise). The label is the shape; the mask lets metrics
measure whether an explanation points at the object.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from .base import DATASETS, ImageDataset, stratified_split

SHAPE_NAMES = ["circle", "square", "triangle", "cross"]


def _shape_masks(kind: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean masks ``(N,H,W)``; ``dx, dy`` are pixel offsets from each centre, ``r`` the radius ``(N,1,1)``."""
    ax, ay = np.abs(dx), np.abs(dy)
    circle = dx**2 + dy**2 <= r**2
    square = np.maximum(ax, ay) <= 0.85 * r
    height = (dy + r) / (1.8 * r)  # 0 at the apex, 1 at the base
    triangle = (dy >= -r) & (dy <= 0.8 * r) & (ax <= height * r)
    arm = r / 3
    cross = ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))
    return np.select([kind == 0, kind == 1, kind == 2, kind == 3], [circle, square, triangle, cross], default=False)


def make_shapes(n: int = 3000, size: int = 32, seed: int = 0, noise: float = 0.03) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``(images (N,3,S,S) float32 in [0,1], labels (N,), masks (N,1,S,S) bool)``."""
    if n < len(SHAPE_NAMES) or size < 16:
        raise DataError(f"shapes needs n >= {len(SHAPE_NAMES)} and size >= 16, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SHAPE_NAMES))
    grid = np.arange(size, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    r = rng.uniform(0.16, 0.28, n).astype(np.float32)[:, None, None] * size
    cx = rng.uniform(0.3, 0.7, n).astype(np.float32)[:, None, None] * size
    cy = rng.uniform(0.3, 0.7, n).astype(np.float32)[:, None, None] * size
    masks = _shape_masks(labels[:, None, None], xx - cx, yy - cy, r)

    bg = rng.uniform(0.0, 1.0, (n, 3, 1, 1)).astype(np.float32)
    shift = rng.uniform(0.45, 0.65, (n, 3, 1, 1)).astype(np.float32)
    fg = np.where(bg > 0.5, bg - shift, bg + shift)  # a strong contrast in every channel
    freq = rng.uniform(1.0, 4.0, (n, 2, 1, 1)).astype(np.float32) * 2 * np.pi / size
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1, 1)).astype(np.float32)
    stripes = np.sin(freq[:, :1] * xx + freq[:, 1:] * yy + phase)
    background = bg + 0.15 * stripes
    images = np.where(masks[:, None], fg, background)
    images = images + noise * rng.standard_normal(images.shape).astype(np.float32)
    return np.clip(images, 0, 1).astype(np.float32), labels.astype(np.int64), masks[:, None]


@DATASETS.register("shapes")
def load_shapes(n: int = 3000, size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """The ``shapes`` dataset with a stratified train/test split (default 2,400 / 600)."""
    images, labels, masks = make_shapes(n, size, seed)
    train, test = stratified_split(labels, test_fraction, seed)
    x, y, m = torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(masks)
    return ImageDataset("shapes", x[train], y[train], x[test], y[test], num_classes=len(SHAPE_NAMES),
                        class_names=list(SHAPE_NAMES), masks_train=m[train], masks_test=m[test])
