"""Datasets as ``torch.utils.data.Dataset``s: on-disk images decoded one per ``__getitem__``, so memory does not
grow with the dataset; the embedded sets (``mnist5k``, ``shapes``) stay in memory behind the same interface.

``open_dataset(name, **options)`` takes the options of ``load_dataset`` and returns :class:`StreamingData`
(train and test ``Dataset``s yielding ``(x (C,H,W) float32 in [0,1], y)``, plus the class names). Batches come
from :func:`xaisec.data.loader.make_loader`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .index import DatasetIndex, Split
from .images import IMAGE_READ_ERRORS


class ImageStream(Dataset):
    """One split of a :class:`~xaisec.data.index.DatasetIndex`, decoded lazily: item ``i`` is
    ``(x float32 (C,H,W) in [0,1], y)`` with ``y`` an int64 scalar or float32 ``(K,)`` multi-hot row.

    An image that cannot be decoded, or decodes to another shape than configured, raises
    :class:`~xaisec.errors.DataError` naming its file (also from a DataLoader worker, see ``make_loader``)."""

    def __init__(self, split: Split, name: str = "dataset"):
        self.split, self.name = split, name
        self.labels = torch.from_numpy(np.asarray(split.labels))

    def __len__(self) -> int:
        return len(self.split)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C,H,W)`` of one item."""
        return self.split.shape

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(i)
        try:
            x = self.split.decode(i)
        except DataError:
            raise
        except (*IMAGE_READ_ERRORS, MemoryError) as exc:
            raise DataError(f"{self.name}: cannot decode {self.split.describe(i)}: {exc}") from None
        if x.shape != self.shape:
            raise DataError(f"{self.name}: {self.split.describe(i)} decoded to shape {x.shape}, but the dataset is "
                            f"configured for {self.shape}; check the size option")
        return torch.from_numpy(x), self.labels[i]


class TensorImages(Dataset):
    """Aligned in-memory tensors as a Dataset: item ``i`` is ``(x[i], y[i])`` (the embedded datasets' path)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):
            raise DataError(f"TensorImages needs one label per input, got {len(x)} inputs and {len(y)} labels")
        self.x, self.labels = x, y

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.labels[i]


class Slice(Dataset):
    """Items ``start..stop-1`` of a Dataset (``data.train_size`` / ``test_size``, an evaluation half), keeping its
    ``shape`` and ``labels``: nothing is decoded or copied."""

    def __init__(self, dataset: Dataset, start: int = 0, stop: int | None = None):
        n = len(dataset)
        self.dataset, self.start = dataset, max(0, min(start, n))
        self.stop = n if stop is None else max(self.start, min(stop, n))
        self.labels = dataset.labels[self.start:self.stop]

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dataset.shape)

    def __getitem__(self, i: int):
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} of a slice of {len(self)}")
        return self.dataset[self.start + i]


def cut(dataset: Dataset, start: int = 0, stop: int | None = None) -> Dataset:
    """Items ``start..stop-1`` of ``dataset``: a tensor slice for :class:`TensorImages` (still in memory), else a
    :class:`Slice`; the dataset itself when the range is all of it."""
    if start == 0 and (stop is None or stop >= len(dataset)):
        return dataset
    if isinstance(dataset, TensorImages):
        return TensorImages(dataset.x[start:stop], dataset.labels[start:stop])
    return Slice(dataset, start, stop)


def is_streamed(dataset: Dataset) -> bool:
    """Whether items are read from disk (not a :class:`TensorImages`, also through :class:`Slice`)."""
    while isinstance(dataset, Slice):
        dataset = dataset.dataset
    return not isinstance(dataset, TensorImages)


def stack_images(dataset: Dataset, indices) -> torch.Tensor:
    """The images of items ``indices`` stacked ``(n,C,H,W)`` (a monitor slice, a background set; small ``n``)."""
    if isinstance(dataset, TensorImages):
        return dataset.x[torch.as_tensor(indices, dtype=torch.long)]
    return torch.stack([dataset[int(i)][0] for i in indices])


class ImageRows:
    """The images of a Dataset indexed like a tensor (``len``, ``rows[idx]`` stacks items ``idx``), for code that
    draws a few rows of ``x_train`` (:meth:`~xaisec.explainers.Explainer.options_from_data`)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = range(*idx.indices(len(self)))
        return stack_images(self.dataset, torch.as_tensor(list(idx) if isinstance(idx, range) else idx).flatten())


@dataclass
class StreamingData:
    """Train and test ``Dataset``s of one dataset with what a model needs to know about them."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    class_names: list[str]
    multilabel: bool = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape)

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]

    def summary(self) -> str:
        how = " (streamed)" if is_streamed(self.train) else ""
        return (f"{self.name}: {len(self.train)} train / {len(self.test)} test{how}, input {self.input_shape}, "
                f"{self.num_classes} classes")


def stream_index(index: DatasetIndex, cache_dir: str | Path | None = None, cache_workers: int = 0) -> StreamingData:
    """:class:`StreamingData` over an index; with ``cache_dir``, through the decoded uint8 cache
    (:mod:`xaisec.data.cache`; built on first use with ``cache_workers`` processes, reused while the files are
    unchanged)."""
    splits = [ImageStream(index.train, f"{index.name} train"), ImageStream(index.test, f"{index.name} test")]
    if cache_dir is not None:
        from .cache import cached

        splits = [cached(s, cache_dir, workers=cache_workers) for s in splits]
    return StreamingData(index.name, *splits, num_classes=index.num_classes, class_names=list(index.class_names),
                         multilabel=index.multilabel)


def open_dataset(name: str, cache_dir: str | Path | None = None, cache_workers: int = 0, **options) -> StreamingData:
    """The dataset registered as ``name`` (options as for :func:`xaisec.data.load_dataset`) as ``Dataset``s:
    on-disk formats are read lazily (``cache_dir``: optional decoded cache, see :func:`stream_index`), the
    embedded ones in memory."""
    from . import DATASETS, STREAMABLE

    DATASETS.get(name)  # unknown names raise with suggestions
    if name in STREAMABLE:
        return stream_index(STREAMABLE[name](**options), cache_dir, cache_workers)
    data = DATASETS.get(name)(**options)
    return StreamingData(data.name, TensorImages(data.x_train, data.y_train), TensorImages(data.x_test, data.y_test),
                         num_classes=data.num_classes, class_names=list(data.class_names), multilabel=data.multilabel)
