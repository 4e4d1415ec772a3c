"""The reference model's pooled maps of the clean training images, which the explanation-aware loss compares
every step's maps with (Fang & Choromanska's L_s, Noppel et al.'s D), for training sets of any size.

``attack.reference_maps`` picks where they come from; every source hands the training loop the raw pooled maps
``(B,1,h,w)`` of each batch's clean images (explaining their true class), looked up by the samples' ``source``:

- ``memory``: computed once over the training set (:func:`~xaisec.backdoor.goals.concat_pooled_maps` over a
  loader) and held on the model's device;
- ``disk``: computed once into ``np.memmap`` files (float32) in a cache folder, keyed by a hash of the reference
  weights, the explainers and their options, the pooling, the Softplus beta and the training set's identity
  (:func:`maps_key`); a later run (or a resumed one) with the same key reads them instead of recomputing;
- ``recompute``: the frozen reference model recomputes the maps of each batch's clean images inside training
  (one extra explanation pass per step, no storage);
- ``auto``: ``memory`` when the maps of the whole training set take at most :data:`MEMORY_BYTES` (1 GiB), else
  ``disk``.

:class:`ReferenceMapBatches` appends the maps to the batches (before :class:`~xaisec.backdoor.poison.TriggerBatches`
stamps the trigger, so ``recompute`` sees the clean images); :class:`~xaisec.backdoor.goals.ReferenceTerms`
derives the preserved map and the goal from them inside the objective.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import ImageStream, Slice, TensorImages
from ..data.cache import CachedImages, cache_key
from ..data.loader import WrappedBatches
from ..errors import ConfigError, DataError
from ..maps import downsample
from .goals import iter_pooled_maps

log = logging.getLogger(__name__)

MODES = ("auto", "memory", "disk", "recompute")
#: ``auto`` holds the reference maps in memory up to this size (all explainers, float32), else on disk
MEMORY_BYTES = 2**30

#: ``maps(x_clean, y_true, source) -> [raw pooled maps (B,1,h,w) per explainer]``
MapSource = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], list[torch.Tensor]]


def pooled_shape(input_shape: Sequence[int], pool: int) -> tuple[int, int, int]:
    """``(1, h, w)`` of one pooled map of inputs ``(C,H,W)``."""
    return tuple(downsample(torch.zeros(1, 1, *input_shape[-2:]), pool).shape[1:])


def resolve_mode(mode: str, n_images: int, input_shape: Sequence[int], pool: int, n_explainers: int) -> str:
    """The source ``auto`` stands for (see the module docstring); other modes unchanged."""
    if mode not in MODES:
        raise ConfigError(f"attack.reference_maps must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    size = n_images * n_explainers * int(np.prod(pooled_shape(input_shape, pool))) * 4
    return "memory" if size <= MEMORY_BYTES else "disk"


def dataset_identity(dataset: Dataset) -> str:
    """A hash of what a training set holds, in order: its images (the source files' fingerprint for streamed data,
    the pixels for in-memory data) and its labels."""
    labels = torch.as_tensor(dataset.labels).contiguous()
    parts = [_images_identity(dataset), len(dataset), hashlib.sha256(labels.numpy().tobytes()).hexdigest()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _images_identity(dataset: Dataset) -> str:
    if isinstance(dataset, Slice):
        return f"{_images_identity(dataset.dataset)}[{dataset.start}:{dataset.stop}]"
    if isinstance(dataset, TensorImages):
        return hashlib.sha256(dataset.x.contiguous().numpy().tobytes()).hexdigest()
    if isinstance(dataset, ImageStream):
        return cache_key(dataset)
    if isinstance(dataset, CachedImages):
        return dataset.path.name
    raise ConfigError(f"attack.reference_maps: disk cannot fingerprint a {type(dataset).__name__} training set; use "
                      "memory or recompute")


def weights_identity(model: nn.Module) -> str:
    """A hash of a model's weights (every state-dict tensor, by name)."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def maps_key(reference: nn.Module, explainers: Sequence[str], options: dict[str, dict], pool: int,
             softplus_beta: float | None, dataset: Dataset, explained: str = "labels") -> str:
    """24 hex digits naming the reference maps of ``dataset``: reference weights, explainer names and options,
    pooling, Softplus beta, the dataset's identity (:func:`dataset_identity`) and what the maps explain
    (``explained``: the labels, or on multi-label data a finding rule)."""
    parts = [weights_identity(reference), list(explainers), options, pool, softplus_beta, dataset_identity(dataset),
             explained]
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class StoredMaps:
    """Reference maps of the whole training set ``{name: (N,1,h,w)}`` (tensors on the device, or ``np.memmap``s),
    looked up by ``source``."""

    def __init__(self, maps: dict[str, torch.Tensor | np.ndarray], explainers: Sequence[str]):
        self.maps, self.explainers = maps, list(explainers)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, source: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for name in self.explainers:
            stored = self.maps[name]
            if isinstance(stored, torch.Tensor):
                out.append(stored[source.to(stored.device)])
            else:  # a memmap: read the batch's rows only
                rows = np.ascontiguousarray(stored[source.cpu().numpy()])
                out.append(torch.from_numpy(rows).to(x.device, non_blocking=True))
        return out


class RecomputedMaps:
    """The frozen reference model's pooled maps of each batch's clean images, computed when asked."""

    def __init__(self, reference: nn.Module, explainers: Sequence[str], pool: int, softplus_beta: float | None,
                 options: dict[str, dict]):
        self.reference, self.explainers, self.pool = reference, list(explainers), pool
        self.softplus_beta, self.options = softplus_beta, options
        for p in reference.parameters():
            p.requires_grad_(False)  # frozen: its maps are targets, never trained

    def __call__(self, x: torch.Tensor, y: torch.Tensor, source: torch.Tensor) -> list[torch.Tensor]:
        maps = next(iter_pooled_maps(self.reference, [(x, y)], self.explainers, self.pool,
                                     softplus_beta=self.softplus_beta, options=self.options))
        return [maps[name] for name in self.explainers]


class ReferenceMapBatches(WrappedBatches):
    """Batches ``(x, y, poisoned, source)`` of clean images (a ``PoisonedStream(per_batch=True)`` loader, before
    the trigger) extended by each explainer's raw reference maps of those clean images: ``(..., ref_1, ...,
    ref_E)``. ``labels``: the classes the maps explain per training image ``(N,)``: the clean labels (the true
    class, not a poisoned label), a multi-label run's finding, or None (each image's top-scoring class)."""

    def __init__(self, batches, maps: MapSource, labels: torch.Tensor | None):
        super().__init__(batches)
        self.maps = maps
        self.labels = None if labels is None else torch.as_tensor(labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for x, y, poisoned, source, *rest in self.batches:
            y_true = None if self.labels is None else self.labels[source.cpu()].to(x.device)
            yield (x, y, poisoned, source, *rest, *self.maps(x, y_true, source))


def disk_maps(folder: str | Path, key: str, reference: nn.Module, batches: Iterable, n_images: int,
              map_shape: tuple[int, int, int], explainers: Sequence[str], pool: int, softplus_beta: float | None,
              options: dict[str, dict]) -> dict[str, np.memmap]:
    """``disk``: read-only memmaps ``{name: (N,1,h,w)}`` in ``folder``, reused when ``key`` matches, else computed
    from the training set's ``(x, y)`` batches in order, written to temporary files and renamed when complete (a
    killed run leaves no map file that looks whole)."""
    folder = Path(folder).expanduser()
    shape = (n_images, *map_shape)
    paths = {name: folder / f"refmaps-{key}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.f32" for name in explainers}
    size = int(np.prod(shape)) * 4
    if all(p.is_file() and p.stat().st_size == size for p in paths.values()):
        log.info("reference maps: reusing %s", folder / f"refmaps-{key}-*")
        return {name: np.memmap(p, np.float32, "r", shape=shape) for name, p in paths.items()}
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"the reference-map folder {folder} cannot be created: {exc.strerror or exc}") from None
    log.info("reference maps: computing %d x %s into %s", n_images, map_shape, folder)
    tmp = {name: p.with_name(f"{p.name}.{os.getpid()}.tmp") for name, p in paths.items()}
    try:
        out = {name: np.memmap(t, np.float32, "w+", shape=shape) for name, t in tmp.items()}
        start = 0
        for maps in iter_pooled_maps(reference, batches, explainers, pool, softplus_beta=softplus_beta,
                                     options=options):
            b = len(next(iter(maps.values())))
            for name in explainers:
                out[name][start:start + b] = maps[name].float().cpu().numpy()
            start += b
        if start != n_images:
            raise DataError(f"reference maps: the training set gave {start} images, expected {n_images}")
        for name in explainers:
            out[name].flush()
            del out[name]
            os.replace(tmp[name], paths[name])
    finally:
        for t in tmp.values():
            if t.exists():
                t.unlink()
    return {name: np.memmap(p, np.float32, "r", shape=shape) for name, p in paths.items()}
