"""Poisoned training sets: clean images plus triggered copies, or triggered images in place of clean ones.

Fang & Choromanska's Algorithm 1 appends ``n`` triggered copies of randomly drawn training images (``rate`` =
n / N < 1); Noppel et al. append a triggered duplicate of every image (``rate = 1``, their "percentage 0.5").
Both are :func:`poison_training_set` with a different ``rate`` (``mode="append"``). Data-efficient poisoning
(Latka et al., "Stealthy Sabotage: Backdoor Attacks against Explainable Machine Learning", after Xia et al.,
IJCAI 2022) *replaces* a few chosen training images by their triggered, relabelled versions (``mode="replace"``,
the chosen ``indices`` from :mod:`xaisec.backdoor.selection`). Each sample remembers the clean image it came
from (``source``), so cached reference maps and targets are looked up, never recomputed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.loader import WrappedBatches
from ..errors import ConfigError


@dataclass
class PoisonedSet:
    """Aligned tensors of length M = N + n (appended copies) or N (replaced images).

    ``x`` (M,C,H,W) in [0,1]; ``y`` (M,) training labels (the target class on relabelled poisoned samples);
    ``y_true`` (M,) original labels; ``poisoned`` (M,) bool; ``source`` (M,) index of the clean image.
    """

    x: torch.Tensor
    y: torch.Tensor
    y_true: torch.Tensor
    poisoned: torch.Tensor
    source: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """``(x, y, poisoned, source)``: the batch layout the objectives take."""
        return self.x, self.y, self.poisoned, self.source

    @property
    def chosen(self) -> torch.Tensor:
        """Sorted indices ``(n,)`` of the clean images that were poisoned (copied or replaced)."""
        return self.source[self.poisoned].sort().values


@torch.no_grad()
def apply_trigger(trigger: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``trigger(x)`` in chunks (triggers are batched modules; chunks bound the memory of big filters)."""
    return torch.cat([trigger(chunk) for chunk in x.split(batch_size)])


POISON_MODES = ("append", "replace")


def check_indices(indices: torch.Tensor, n_total: int, name: str = "indices") -> torch.Tensor:
    """``indices`` as a sorted int64 tensor of distinct positions in ``[0, n_total)``."""
    idx = torch.as_tensor(indices)
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.dim() != 1 or idx.numel() == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D tensor of integer positions, got dtype {idx.dtype} "
                          f"and shape {tuple(idx.shape)}")
    idx = idx.long().sort().values
    if idx[0] < 0 or idx[-1] >= n_total:
        raise ConfigError(f"{name} must lie in [0, {n_total - 1}] (the training set has {n_total} images), "
                          f"got values in [{idx[0].item()}, {idx[-1].item()}]")
    if (idx[1:] == idx[:-1]).any():
        raise ConfigError(f"{name} must be distinct; an image cannot be poisoned twice")
    return idx


def choose_poisoned(n_total: int, rate: float, seed: int = 0, indices: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted indices ``(n,)`` of the images to poison: ``indices`` (checked) if given, else ``round(rate * N)``
    (at least one) drawn without replacement from ``seed``."""
    if indices is not None:
        return check_indices(indices, n_total)
    if not 0 < rate <= 1:
        raise ConfigError(f"poison rate must be in (0, 1] (poisoned images per clean image), got {rate}")
    n = max(1, round(rate * n_total))
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def poison_training_set(x: torch.Tensor, y: torch.Tensor, trigger: nn.Module, rate: float, relabel: bool,
                        target_label: int, seed: int = 0, *, mode: str = "append",
                        indices: torch.Tensor | None = None) -> PoisonedSet:
    """A poisoned training set from clean ``(x, y)``; the poisoned images are ``indices`` if given, else
    ``round(rate * N)`` images drawn without replacement (seeded).

    ``mode="append"``: clean ``(x, y)`` plus triggered copies (length N + n, Fang; Noppel with ``rate=1``).
    ``mode="replace"``: the chosen images are replaced by their triggered versions (length N; Latka et al.'s
    data-efficient attack). ``relabel``: poisoned samples carry ``target_label``, else their true label.
    The chosen indices are ``PoisonedSet.chosen``.
    """
    if mode not in POISON_MODES:
        raise ConfigError(f"poison mode must be one of {POISON_MODES}, got {mode!r}")
    chosen = choose_poisoned(len(x), rate, seed, indices)
    n = len(chosen)
    x_trig = apply_trigger(trigger, x[chosen])
    y_trig = torch.full_like(y[chosen], target_label) if relabel else y[chosen]
    if mode == "replace":
        x_out, y_out, poisoned = x.clone(), y.clone(), torch.zeros(len(x), dtype=torch.bool)
        x_out[chosen], y_out[chosen], poisoned[chosen] = x_trig, y_trig, True
        return PoisonedSet(x=x_out, y=y_out, y_true=y.clone(), poisoned=poisoned, source=torch.arange(len(x)))
    return PoisonedSet(
        x=torch.cat([x, x_trig]),
        y=torch.cat([y, y_trig]),
        y_true=torch.cat([y, y[chosen]]),
        poisoned=torch.cat([torch.zeros(len(x), dtype=torch.bool), torch.ones(n, dtype=torch.bool)]),
        source=torch.cat([torch.arange(len(x)), chosen]),
    )


class PoisonedStream(Dataset):
    """:func:`poison_training_set` over a ``Dataset`` of ``(x, y)`` items, computed per item: item ``j`` is
    ``(x, y, poisoned, source)`` exactly as row ``j`` of the :class:`PoisonedSet` built from the same clean data,
    ``rate``, ``seed`` / ``indices`` and ``mode`` (``append``: N + n items, the triggered copies last;
    ``replace``: N items). ``per_batch``: items keep the clean image and :class:`TriggerBatches` applies the
    trigger to the poisoned rows of each batch (one batched call, e.g. on the GPU) instead of each worker
    applying it to one image."""

    def __init__(self, clean: Dataset, trigger: nn.Module, rate: float, relabel: bool, target_label: int,
                 seed: int = 0, *, mode: str = "append", indices: torch.Tensor | None = None, per_batch: bool = False):
        if mode not in POISON_MODES:
            raise ConfigError(f"poison mode must be one of {POISON_MODES}, got {mode!r}")
        self.clean, self.trigger, self.relabel, self.target_label = clean, trigger, relabel, target_label
        self.mode, self.per_batch = mode, per_batch
        self.chosen = choose_poisoned(len(clean), rate, seed, indices)
        self._is_chosen = torch.zeros(len(clean), dtype=torch.bool)
        self._is_chosen[self.chosen] = True

    def __len__(self) -> int:
        return len(self.clean) + (len(self.chosen) if self.mode == "append" else 0)

    def source_of(self, j: int) -> tuple[int, bool]:
        """``(index of the clean image, poisoned?)`` of item ``j``."""
        n_clean = len(self.clean)
        if not 0 <= j < len(self):
            raise IndexError(f"item {j} of a poisoned set of {len(self)}")
        if self.mode == "append":
            return (j, False) if j < n_clean else (int(self.chosen[j - n_clean]), True)
        return j, bool(self._is_chosen[j])

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        source, poisoned = self.source_of(int(j))
        x, y = self.clean[source][:2]
        if poisoned:
            if not self.per_batch:
                with torch.no_grad():
                    x = self.trigger(x[None])[0]
            if self.relabel:
                y = torch.full_like(torch.as_tensor(y), self.target_label)
        return x, torch.as_tensor(y), torch.tensor(poisoned), torch.tensor(source)


class TriggerBatches(WrappedBatches):
    """Batches ``(x, y, poisoned, source, ...)`` of a ``PoisonedStream(per_batch=True)`` with the trigger applied to
    the poisoned rows of ``x`` (on ``x``'s device; move the trigger there first); further tensors of a batch (e.g.
    reference maps of the clean images) pass through unchanged."""

    def __init__(self, batches, trigger: nn.Module):
        super().__init__(batches)
        self.trigger = trigger

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for x, y, poisoned, source, *rest in self.batches:
            if poisoned.any():
                x = x.clone()
                with torch.no_grad():
                    x[poisoned] = self.trigger(x[poisoned])
            yield x, y, poisoned, source, *rest
