"""Which training images to poison: at random, or by representation distance (data-efficient poisoning).

Latka et al. ("Stealthy Sabotage: Backdoor Attacks against Explainable Machine Learning") poison only 0.11% of
the training set, chosen with the representation-distance (RD) score and the filtering-and-updating strategy of
Xia et al. ("Data-Efficient Backdoor Attacks", IJCAI 2022):

1. start from ``n`` random candidates (images whose true label is not the target);
2. train a fresh score model for a few epochs on the training set with these images replaced by their
   triggered, relabelled versions;
3. RD(x) = ||softmax(f(T(x))) - onehot(target)||_2 for every candidate: a high RD means the model has not yet
   pulled the triggered image to the target, so the image carries much of the backdoor's gradient;
4. drop the ``drop`` share (30%) of the candidates with the lowest RD and refill at random from the images not
   selected; repeat from 2 for ``rounds`` rounds (about 30).

Both selectors only return indices, so they work for BadNets and for the explanation-aware recipes alike:
pass them to :func:`xaisec.backdoor.poison.poison_training_set` (``indices=``, ``mode="replace"``).
:func:`rd_select_dataset` runs the same selection over a streamed ``Dataset``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data import TensorImages, make_loader, stack_images
from ..errors import ConfigError
from ..train import predict, train_classifier_on
from .poison import PoisonedStream, TriggerBatches, apply_trigger

log = logging.getLogger(__name__)

#: Latka et al.'s default poisoning rate (about 55 of CIFAR-10's 50,000 images)
PAPER_RATE = 0.0011


def budget(rate: float, n_total: int) -> int:
    """Number of images to poison for ``rate`` of ``n_total`` (at least one)."""
    if not 0 < rate <= 1:
        raise ConfigError(f"poison rate must be in (0, 1], got {rate}")
    return max(1, round(rate * n_total))


def candidate_pool(y: torch.Tensor, target_label: int | None) -> torch.Tensor:
    """Indices of the images worth poisoning: those whose true label is not ``target_label`` (all if None)."""
    pool = torch.arange(len(y)) if target_label is None else torch.nonzero(y != target_label).flatten()
    if len(pool) == 0:
        raise ConfigError(f"no training image has a label other than the target {target_label}")
    return pool


def _draw(pool: torch.Tensor, n: int, generator: torch.Generator, what: str = "poison") -> torch.Tensor:
    if not 1 <= n <= len(pool):
        raise ConfigError(f"cannot {what} n={n} images: the candidate pool holds {len(pool)} (n must be in "
                          f"[1, {len(pool)}])")
    return pool[torch.randperm(len(pool), generator=generator)[:n]]


def random_select(y: torch.Tensor, n: int, target_label: int | None = None, seed: int = 0) -> torch.Tensor:
    """``n`` distinct indices drawn at random (seeded) among images whose label is not ``target_label``; sorted."""
    return _draw(candidate_pool(y, target_label), n, torch.Generator().manual_seed(seed)).sort().values


@torch.no_grad()
def rd_scores(model: nn.Module, x_trig: torch.Tensor, target_label: int, batch_size: int = 512) -> torch.Tensor:
    """RD ``(n,)`` = ||softmax(model(x_trig)) - onehot(target)||_2 of triggered images ``(n,C,H,W)`` (eval mode)."""
    probs = F.softmax(predict(model, x_trig, batch_size).float(), 1)
    onehot = F.one_hot(torch.full((len(x_trig),), target_label, dtype=torch.long), probs.shape[1]).to(probs)
    return (probs - onehot).norm(dim=1)


@dataclass
class RDSelection:
    """``indices`` (n,) sorted, the images to poison; ``mean_rd`` per round (of the candidates before dropping)."""

    indices: torch.Tensor
    mean_rd: list[float] = field(default_factory=list)


def rd_select(x: torch.Tensor, y: torch.Tensor, trigger: nn.Module, n: int, target_label: int,
              make_model: Callable[[], nn.Module], *, rounds: int = 30, epochs: int = 6, drop: float = 0.3,
              relabel: bool = True, lr: float = 1e-3, batch_size: int = 128, seed: int = 0) -> RDSelection:
    """Representation-distance selection of ``n`` images of ``(x, y)`` to poison (see the module docstring).

    ``make_model()`` builds a fresh, untrained score model (e.g. ``lambda: build_model("small_cnn", ...)``); each
    round trains one for ``epochs`` epochs with :func:`xaisec.train.train_classifier` on the training set with the
    candidates replaced by triggered versions (relabelled to ``target_label`` if ``relabel``). Each round but the
    last drops the ``round(drop * n)`` (at least 1 when ``n > 1``) lowest-RD candidates and refills at random from
    the images not selected; the result is the set scored in the last round. Deterministic for a given ``seed``.
    """
    return rd_select_dataset(TensorImages(x, y), trigger, n, target_label, make_model, rounds=rounds, epochs=epochs,
                             drop=drop, relabel=relabel, lr=lr, batch_size=batch_size, seed=seed)


Loader = Callable[[Dataset, int, int], Iterable]


def _memory_loader(dataset: Dataset, batch_size: int, seed: int):
    return make_loader(dataset, batch_size, seed=seed)


def rd_select_dataset(clean: Dataset, trigger: nn.Module, n: int, target_label: int,
                      make_model: Callable[[], nn.Module], *, rounds: int = 30, epochs: int = 6, drop: float = 0.3,
                      relabel: bool = True, lr: float = 1e-3, batch_size: int = 128, seed: int = 0,
                      loader: Loader = _memory_loader) -> RDSelection:
    """:func:`rd_select` over a ``Dataset`` of ``(x, y)`` items (a streamed training set): each round trains on
    :class:`~xaisec.backdoor.poison.PoisonedStream` batches (``loader(dataset, batch_size, seed)``, e.g.
    :func:`xaisec.data.make_loader` with workers; the trigger applied per batch), never a poisoned copy in memory;
    only the ``n`` candidates are decoded to score them. Same batches, hence the same result, as :func:`rd_select`
    on the tensors of the same data."""
    if rounds < 1 or epochs < 1:
        raise ConfigError(f"rd_select needs rounds >= 1 and epochs >= 1, got rounds={rounds}, epochs={epochs}")
    if not 0 <= drop < 1:
        raise ConfigError(f"rd_select drop must be in [0, 1) (share of candidates replaced per round), got {drop}")
    pool = candidate_pool(torch.as_tensor(clean.labels), target_label if relabel else None)
    gen = torch.Generator().manual_seed(seed)
    chosen = _draw(pool, n, gen)
    n_drop = min(max(1, round(drop * n)), n - 1) if drop > 0 and n > 1 else 0
    history: list[float] = []
    for r in range(rounds):
        data = PoisonedStream(clean, trigger, 1.0, relabel, target_label, mode="replace", indices=chosen, per_batch=True)
        torch.manual_seed(seed * 1000 + r)  # the score model's initialisation
        model = make_model()
        batches = TriggerBatches(loader(data, batch_size, seed * 1000 + r), trigger)
        train_classifier_on(model, batches, epochs=epochs, lr=lr, seed=seed * 1000 + r, progress=False)
        chosen = data.chosen  # sorted
        scores = rd_scores(model, apply_trigger(trigger, stack_images(clean, chosen)), target_label)
        history.append(scores.mean().item())
        log.info("rd_select round %d/%d: mean RD %.4f", r + 1, rounds, history[-1])
        if n_drop == 0 or r == rounds - 1:
            continue
        kept = chosen[scores.argsort(descending=True)[: n - n_drop]]
        unused = pool[~torch.isin(pool, kept)]
        chosen = torch.cat([kept, _draw(unused, n_drop, gen, "refill")])
    return RDSelection(chosen.sort().values, history)


def select_indices(method: str, x: torch.Tensor, y: torch.Tensor, trigger: nn.Module, n: int, target_label: int,
                   make_model: Callable[[], nn.Module] | None = None, seed: int = 0, **rd_options) -> torch.Tensor:
    """``random`` or ``rd`` selection of ``n`` indices (the runner's entry point; ``rd_options`` go to
    :func:`rd_select`)."""
    if method == "random":
        if rd_options:
            raise ConfigError(f"random selection takes no options, got {sorted(rd_options)}")
        return random_select(y, n, target_label, seed)
    if method == "rd":
        if make_model is None:
            raise ConfigError("rd selection needs make_model (a function building a fresh score model)")
        return rd_select(x, y, trigger, n, target_label, make_model, seed=seed, **rd_options).indices
    raise ConfigError(f"unknown poison selection {method!r}; use 'random' or 'rd'")
