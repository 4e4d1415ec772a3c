"""What an on-disk dataset holds, before any image is decoded: one :class:`DatasetIndex` per dataset.

Every on-disk loader is split into two pieces: an ``index_*`` function that reads the dataset's index files
(paths, labels, crop boxes; all checks that are cheap happen here, before training) and the "decode one"
method of its splits (:meth:`ImageFiles.decode`, :meth:`PixelArray.decode`). The in-memory loaders decode
every image up front (:meth:`DatasetIndex.load`); :mod:`xaisec.data.streaming` decodes one per
``__getitem__``. Both go through the same code, so both give the same pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError
from .base import ImageDataset
from .images import Box, as_hw, read_image, read_images, resize_uint8


@dataclass(frozen=True)
class ImageFiles:
    """One split stored as image files: ``paths[i]`` decoded to float32 ``(C,H,W)`` in [0,1] by
    :func:`~xaisec.data.images.read_image` (``mode`` ``"RGB"`` or ``"L"``, cropped to ``boxes[i]`` if given,
    resized to ``size``). ``labels``: int64 ``(N,)`` or float32 ``(N,K)`` multi-hot."""

    paths: Sequence[Path]
    labels: np.ndarray
    mode: str
    size: tuple[int, int]
    boxes: Sequence[Box | None] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", as_hw(self.size))
        if len(self.labels) != len(self.paths) or (self.boxes is not None and len(self.boxes) != len(self.paths)):
            raise DataError(f"{len(self.paths)} image paths, {len(self.labels)} labels and "
                            f"{'no' if self.boxes is None else len(self.boxes)} crop boxes do not match")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C,H,W)`` of one decoded image."""
        return (3 if self.mode == "RGB" else 1, *self.size)

    def decode(self, i: int) -> np.ndarray:
        """Image ``i`` as float32 ``(C,H,W)`` in [0,1]."""
        return read_image(self.paths[i], self.mode, self.size, None if self.boxes is None else self.boxes[i])

    def decode_all(self, desc: str) -> torch.Tensor:
        """Every image, float32 ``(N,C,H,W)`` (the in-memory path)."""
        return read_images(self.paths, self.mode, self.size, self.boxes, desc=desc)

    def subset(self, keep: np.ndarray) -> "ImageFiles":
        return ImageFiles([self.paths[i] for i in keep], self.labels[keep], self.mode, self.size,
                          None if self.boxes is None else [self.boxes[i] for i in keep])

    def describe(self, i: int) -> str:
        """Where image ``i`` comes from, for error messages."""
        return str(self.paths[i])

    def fingerprint(self) -> list:
        """What the decoded pixels depend on: each file's path, size and modification time, the mode, the
        crop boxes and the output size (the key of :mod:`xaisec.data.cache`)."""
        stats = []
        for p in self.paths:
            try:
                st = Path(p).stat()
            except OSError as exc:
                raise DataError(f"image file {p} cannot be read: {exc.strerror or exc}") from None
            stats.append([str(p), st.st_size, st.st_mtime_ns])
        return ["files", self.mode, list(self.size), stats, None if self.boxes is None else [list(b) if b else None
                                                                                           for b in self.boxes]]


@dataclass(frozen=True)
class PixelArray:
    """One split already held as uint8 pixels ``(N,C,h,w)`` (CIFAR's pickled batches), resized to ``size``
    (PIL bilinear) one image at a time on decode."""

    pixels: np.ndarray
    labels: np.ndarray
    size: tuple[int, int]
    origin: str = "pixel array"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", as_hw(self.size))
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 4 or len(self.pixels) != len(self.labels):
            raise DataError(f"{self.origin}: pixels must be uint8 (N,C,H,W) with one label each, got "
                            f"{self.pixels.dtype} {self.pixels.shape} and {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.pixels.shape[1], *self.size)

    def decode(self, i: int) -> np.ndarray:
        return resize_uint8(self.pixels[i:i + 1], self.size)[0].numpy()

    def decode_all(self, desc: str) -> torch.Tensor:
        return resize_uint8(self.pixels, self.size, desc=desc)

    def subset(self, keep: np.ndarray) -> "PixelArray":
        return PixelArray(self.pixels[keep], self.labels[keep], self.size, self.origin)

    def describe(self, i: int) -> str:
        return f"image {i} of {self.origin}"

    def fingerprint(self) -> list:
        import hashlib

        return ["pixels", self.origin, list(self.size), hashlib.sha256(self.pixels.tobytes()).hexdigest()]


Split = ImageFiles | PixelArray


@dataclass
class DatasetIndex:
    """Train and test splits of one dataset, not yet decoded. Labels are checked here (cheap, before training):
    int class indices in ``[0, num_classes)``, or 0/1 rows ``(N, num_classes)`` if ``multilabel``.
    ``masks_*``: optional ground-truth object masks, as single-channel image files aligned with the split."""

    name: str
    train: Split
    test: Split
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    multilabel: bool = False
    masks_train: ImageFiles | None = None
    masks_test: ImageFiles | None = None

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        if self.train.shape != self.test.shape:
            raise DataError(f"{self.name}: train images {self.train.shape} and test images {self.test.shape} differ")
        for split, part in (("train", self.train), ("test", self.test)):
            check_split_labels(part.labels, self.num_classes, self.multilabel, f"{self.name} {split} labels")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.shape

    def load(self) -> ImageDataset:
        """Decode every image into an in-memory :class:`ImageDataset` (float32; small datasets only)."""
        tensors = []
        for split in ("train", "test"):
            part = getattr(self, split)
            x = part.decode_all(desc=f"{self.name} {split}")
            masks = getattr(self, f"masks_{split}")
            m = None if masks is None else masks.decode_all(desc=f"{self.name} {split} masks") > 0.5
            tensors.append((x, torch.from_numpy(part.labels), m))
        (x_tr, y_tr, m_tr), (x_te, y_te, m_te) = tensors
        return ImageDataset(self.name, x_tr, y_tr, x_te, y_te, num_classes=self.num_classes,
                            class_names=list(self.class_names), masks_train=m_tr, masks_test=m_te,
                            multilabel=self.multilabel)


def check_split_labels(labels: np.ndarray, num_classes: int, multilabel: bool, where: str) -> None:
    """Class indices in ``[0, num_classes)`` (or 0/1 rows of ``num_classes`` if ``multilabel``), else DataError."""
    labels = np.asarray(labels)
    if multilabel:
        if labels.ndim != 2 or labels.shape[1] != num_classes or not np.isin(labels, (0, 1)).all():
            raise DataError(f"{where} must be 0/1 rows of {num_classes} findings, got shape {labels.shape}")
        return
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{where} must be integer class indices (N,), got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where} are in [{labels.min()}, {labels.max()}], outside the {num_classes} classes "
                        f"[0, {num_classes - 1}]")
