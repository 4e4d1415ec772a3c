"""Mini-batches of any ``Dataset`` through ``torch.utils.data.DataLoader``, with the interface of
:class:`xaisec.train.TensorBatches` (``set_epoch``, ``len``, iteration), so :func:`xaisec.train.fit` trains on
streamed data unchanged.

The order of epoch ``e`` is ``torch.randperm(N, seed + e)``, exactly as ``TensorBatches``: a run resumed at
epoch ``e`` sees the same batches as an uninterrupted one, and an in-memory and a streamed copy of one dataset
give the same batches. Worker processes decode in parallel; they persist across epochs; pinned memory is used
when the device is CUDA. A :class:`~xaisec.errors.DataError` raised in a worker reaches the caller as a
``DataError`` with its own message (naming the file), not as a worker traceback.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError
from ..validation import check_int


class SeededOrder(Sampler[int]):
    """Indices ``0..n-1``: shuffled from ``seed + epoch`` (``set_epoch``), or in order."""

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, epoch: int = 0):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist())


class StreamBatches:
    """Batches of a DataLoader in the seeded per-epoch order of :class:`SeededOrder` (see the module docstring)."""

    def __init__(self, loader: DataLoader, order: SeededOrder):
        self.loader, self.order = loader, order

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset

    @property
    def epoch(self) -> int:
        return self.order.epoch

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        try:
            for batch in self.loader:
                yield tuple(batch)
        except DataError as exc:
            raise DataError(worker_message(exc)) from None


class WrappedBatches:
    """Base of the batch wrappers (device moves, augmentation, triggers, reference maps): ``set_epoch`` and ``len``
    pass through to the wrapped ``batches`` (``TensorBatches``, ``make_loader`` or another wrapper); a subclass
    defines ``__iter__``."""

    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)


class DeviceBatches(WrappedBatches):
    """Batches of tensors moved to ``device`` as they are drawn (non-blocking from pinned memory), so that what
    follows (a per-batch trigger, reference maps) runs there."""

    def __init__(self, batches, device: str | torch.device):
        super().__init__(batches)
        self.device = torch.device(device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for batch in self.batches:
            yield tuple(t.to(self.device, non_blocking=True) for t in batch)


def worker_message(exc: DataError) -> str:
    """The original message of a DataError re-raised by a DataLoader from a worker process (which wraps it in
    "Caught DataError in DataLoader worker process k. Original Traceback ..."); other messages unchanged."""
    text = str(exc)
    if not text.startswith("Caught DataError in DataLoader worker"):
        return text
    marker = f"{DataError.__module__}.{DataError.__qualname__}: "
    return text.split(marker, 1)[1].rstrip() if marker in text else text


def make_loader(dataset: Dataset, batch_size: int = 128, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                workers: int = 0, device: str | torch.device = "cpu", drop_last: bool = False) -> StreamBatches:
    """Batches of ``dataset`` (items collated by the default collate, e.g. ``(x (B,C,H,W), y (B,))``).

    ``shuffle``/``seed``/``epoch``: the order of :class:`SeededOrder` (call ``set_epoch`` each epoch, as ``fit``
    does). ``workers``: decoding processes (0 = in this process); they persist across epochs. ``device``: memory
    is pinned when it is a CUDA device (batches still arrive on the host; ``fit`` moves them).
    """
    check_int(batch_size, "batch_size", low=1, error=DataError)
    check_int(workers, "workers", low=0, high=256, error=DataError)
    order = SeededOrder(len(dataset), shuffle, seed, epoch)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers,
                        pin_memory=torch.device(device).type == "cuda", persistent_workers=workers > 0,
                        drop_last=drop_last)
    return StreamBatches(loader, order)
