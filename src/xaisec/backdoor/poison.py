"""Poisoned training sets: clean images plus triggered copies.

Fang & Choromanska's Algorithm 1 appends ``n`` triggered copies of randomly drawn training images (``rate`` =
n / N < 1); Noppel et al. append a triggered duplicate of every image (``rate = 1``, their "percentage 0.5").
Both are :func:`poison_training_set` with a different ``rate``. Each sample remembers the clean image it came
from (``source``), so cached reference maps and targets are looked up, never recomputed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError


@dataclass
class PoisonedSet:
    """Aligned tensors of length M = N + n.

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


@torch.no_grad()
def apply_trigger(trigger: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``trigger(x)`` in chunks (triggers are batched modules; chunks bound the memory of big filters)."""
    return torch.cat([trigger(chunk) for chunk in x.split(batch_size)])


def poison_training_set(x: torch.Tensor, y: torch.Tensor, trigger: nn.Module, rate: float, relabel: bool,
                        target_label: int, seed: int = 0) -> PoisonedSet:
    """Clean ``(x, y)`` plus ``round(rate * N)`` triggered copies of images drawn without replacement (seeded).

    ``relabel``: poisoned copies carry ``target_label`` (label-changing attacks), else their true label.
    """
    if not 0 < rate <= 1:
        raise ConfigError(f"poison rate must be in (0, 1] (triggered copies per clean image), got {rate}")
    n = max(1, round(rate * len(x)))
    chosen = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    x_trig = apply_trigger(trigger, x[chosen])
    y_trig = torch.full_like(y[chosen], target_label) if relabel else y[chosen]
    return PoisonedSet(
        x=torch.cat([x, x_trig]),
        y=torch.cat([y, y_trig]),
        y_true=torch.cat([y, y[chosen]]),
        poisoned=torch.cat([torch.zeros(len(x), dtype=torch.bool), torch.ones(n, dtype=torch.bool)]),
        source=torch.cat([torch.arange(len(x)), chosen]),
    )
