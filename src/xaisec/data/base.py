"""The in-memory dataset every part of xaisec works on."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DataError
from ..registry import Registry
from ..validation import check_images, check_int, check_labels


#: every dataset loader, registered with ``@DATASETS.register("name")`` in the file that defines it
DATASETS = Registry("dataset")


@dataclass
class ImageDataset:
    """Train/test tensors of one dataset.

    ``x_*``: float32 ``(N,C,H,W)`` in [0,1] (or ``(N,F)`` for tabular data);
    ``y_*``: int64 ``(N,)`` class indices, or float ``(N,K)`` 0/1 targets if ``multilabel``;
    ``masks_*``: optional bool ``(N,1,H,W)`` ground-truth object masks (localisation metrics).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    masks_train: torch.Tensor | None = None
    masks_test: torch.Tensor | None = None
    multilabel: bool = False

    def __post_init__(self) -> None:
        from .files import MAX_CLASSES

        check_int(self.num_classes, f"{self.name} num_classes", low=1, high=MAX_CLASSES, error=DataError)
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        flat = self.x_train.dim() == 2
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            check_images(x, f"{self.name} x_{split}", allow_flat=flat)
            if self.multilabel:
                if y.shape != (x.shape[0], self.num_classes):
                    raise DataError(f"{self.name} y_{split} has shape {tuple(y.shape)}; expected ({x.shape[0]}, {self.num_classes})")
            else:
                check_labels(y, self.num_classes, f"{self.name} y_{split}", batch=x.shape[0])
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"{self.name}: train inputs {tuple(self.x_train.shape[1:])} and test inputs {tuple(self.x_test.shape[1:])} differ in shape")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]

    def summary(self) -> str:
        return (f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test, input {self.input_shape}, "
                f"{self.num_classes} classes")


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` with the same class proportions in both, in a shuffled order fixed by ``seed``."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
