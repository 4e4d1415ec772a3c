"""One generic training loop for clean models, backdoors and fine-tuning defenses.

``fit(model, batches, objective, optimizer, epochs)`` where ``objective(model, batch) -> LossOutput``.
Batches come from :class:`TensorBatches` (in-memory tensors, shuffled per epoch from a seed, so a run
resumed at epoch ``e`` sees the same batches as an uninterrupted one) or from :func:`xaisec.data.make_loader`
(streamed datasets, the same order); anything with ``set_epoch``, ``len`` and iteration over tuples works.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed, numerics

log = logging.getLogger(__name__)


@dataclass
class LossOutput:
    """``total`` (scalar tensor to minimise) and named scalar ``parts`` for logging."""

    total: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


Objective = Callable[[nn.Module, Sequence[torch.Tensor]], LossOutput]


class TensorBatches:
    """Mini-batches of aligned tensors, reshuffled each epoch from ``seed + epoch``. ``pin_memory``: each batch
    is gathered into page-locked memory, so ``fit``'s ``.to(device, non_blocking=True)`` copies it to a CUDA GPU
    asynchronously (as a DataLoader's ``pin_memory``); ignored where CUDA is not available."""

    def __init__(self, *tensors: torch.Tensor, batch_size: int = 128, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, pin_memory: bool = False):
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("TensorBatches needs tensors of one length")
        self.tensors, self.batch_size, self.shuffle, self.seed, self.drop_last = tensors, batch_size, shuffle, seed, drop_last
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.tensors[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self.tensors[0])
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
                 if self.shuffle else torch.arange(n))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            batch = tuple(t[idx] for t in self.tensors)
            yield tuple(t.pin_memory() for t in batch) if self.pin_memory else batch


def cross_entropy(model: nn.Module, batch: Sequence[torch.Tensor]) -> LossOutput:
    """Plain classification objective on ``(x, y, ...)`` batches."""
    x, y = batch[0], batch[1]
    loss = F.cross_entropy(model(x), y)
    return LossOutput(loss, {"ce": loss.item()})


@contextlib.contextmanager
def training_mode(model: nn.Module, freeze_batchnorm: bool = False) -> Iterator[nn.Module]:
    """``model.train()`` inside the block (BatchNorm kept in eval mode if ``freeze_batchnorm``), modes restored after."""
    modes = {m: m.training for m in model.modules()}
    model.train()
    if freeze_batchnorm:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)


@contextlib.contextmanager
def batchnorm_stats_kept(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, forward passes of train-mode BatchNorm layers still normalise with batch statistics
    (the model computes what its mode says) but their running statistics are restored on exit, so explaining
    a model does not change it. Costs nothing when no BatchNorm layer is training."""
    saved = [(m, m.running_mean.clone() if m.running_mean is not None else None,
              m.running_var.clone() if m.running_var is not None else None,
              m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                for buffer, value in ((m.running_mean, mean), (m.running_var, var), (m.num_batches_tracked, count)):
                    if value is not None:
                        buffer.copy_(value)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block, every submodule's mode restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)


EpochCallback = Callable[[int, dict[str, float]], bool | None]


def fit(model: nn.Module, batches: TensorBatches, objective: Objective, optimizer: torch.optim.Optimizer,
        epochs: int, *, start_epoch: int = 0, scheduler=None, freeze_batchnorm: bool = False,
        on_epoch_end: EpochCallback | None = None, progress: bool = True, desc: str = "train",
        flush_denormals: bool | None = None) -> list[dict[str, float]]:
    """Train for ``epochs`` epochs (from ``start_epoch``); returns the per-epoch mean of each loss part.

    ``on_epoch_end(epoch, logs)`` runs after each epoch (evaluation, checkpoint, early stopping):
    returning True stops training. ``flush_denormals``: subnormal floats are flushed to zero meanwhile
    (:func:`xaisec.numerics.flush_denormals`; up to 5x faster steps once training has moved the model).
    Under ``torchrun`` (:mod:`xaisec.distributed`) each rank trains on its slice of every batch and the gradients
    are averaged over ranks before each step; the logged loss parts are this rank's slice.
    """
    from .models import model_device

    device = model_device(model)
    history: list[dict[str, float]] = []
    distributed.broadcast_parameters(model)
    with numerics.flush_denormals(flush_denormals), training_mode(model, freeze_batchnorm):
        for epoch in range(start_epoch, epochs):
            batches.set_epoch(epoch)
            sums: dict[str, float] = {}
            bar = tqdm(batches, desc=f"{desc} {epoch + 1}/{epochs}", leave=False, disable=None if progress else True)
            for batch in bar:
                batch, share = distributed.shard(batch)
                batch = tuple(t.to(device, non_blocking=True) for t in batch)  # data stays on the host
                out = objective(model, batch)
                if not torch.isfinite(out.total):
                    raise FloatingPointError(f"loss became {out.total.item()} in epoch {epoch + 1}; lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                out.total.backward()
                distributed.average_gradients(model, share)
                optimizer.step()
                parts = {"loss": out.total.item(), **out.parts}
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{parts['loss']:.4f}", refresh=False)
            if scheduler is not None:
                scheduler.step()
            logs = {k: v / max(len(batches), 1) for k, v in sums.items()}
            history.append(logs)
            log.info("%s epoch %d/%d: %s", desc, epoch + 1, epochs, ", ".join(f"{k}={v:.4f}" for k, v in logs.items()))
            if on_epoch_end is not None:
                with eval_mode(model):
                    stop = on_epoch_end(epoch, logs)
                if stop:
                    break
    return history


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits ``(N,K)`` in eval mode (mode restored), in batches computed on the model's device and returned on
    ``x``'s device."""
    from .models import model_device

    device = model_device(model)
    with eval_mode(model):
        return torch.cat([model(chunk.to(device)).to(x.device) for chunk in x.split(batch_size)])


@torch.no_grad()
def predict_batches(model: nn.Module, batches: Iterable[Sequence[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N,K), labels)`` over every ``(x, y, ...)`` batch of a loader (a streamed test split, e.g.
    :func:`xaisec.data.make_loader` with ``shuffle=False``), in eval mode (mode restored), on the host."""
    from .models import model_device

    device = model_device(model)
    logits, labels = [], []
    with eval_mode(model):
        for batch in batches:
            logits.append(model(batch[0].to(device, non_blocking=True)).cpu())
            labels.append(batch[1])
    return torch.cat(logits), torch.cat(labels)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, top: int = 1, batch_size: int = 512) -> float:
    """Top-``top`` accuracy in [0,1] (higher is better)."""
    logits = predict(model, x, batch_size)
    hits = (logits.topk(min(top, logits.shape[1]), dim=1).indices == y[:, None]).any(1)
    return hits.float().mean().item()


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 10, lr: float = 1e-3,
                     batch_size: int = 128, weight_decay: float = 0.0, seed: int = 0, progress: bool = True,
                     on_epoch_end: EpochCallback | None = None, flush_denormals: bool | None = None) -> list[dict[str, float]]:
    """Train a clean (reference) classifier with Adam + cosine schedule on in-memory data (``flush_denormals``: see
    :func:`fit`)."""
    return train_classifier_on(model, TensorBatches(x, y, batch_size=batch_size, seed=seed), epochs=epochs, lr=lr,
                               weight_decay=weight_decay, seed=seed, progress=progress, on_epoch_end=on_epoch_end,
                               flush_denormals=flush_denormals)


def train_classifier_on(model: nn.Module, batches, *, epochs: int = 10, lr: float = 1e-3, weight_decay: float = 0.0,
                        seed: int = 0, progress: bool = True, on_epoch_end: EpochCallback | None = None,
                        flush_denormals: bool | None = None) -> list[dict[str, float]]:
    """:func:`train_classifier` on any ``(x, y, ...)`` batches (:class:`TensorBatches`, a streamed loader)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    return fit(model, batches, cross_entropy, opt, epochs, scheduler=sched, on_epoch_end=on_epoch_end,
               progress=progress, desc="clean", flush_denormals=flush_denormals)
