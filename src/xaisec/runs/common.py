"""Pieces every experiment kind shares: the prepared data and model factory, the one clean-classifier (reference)
training stage, trained-model artifacts and the per-epoch log.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .. import distributed
from ..data import (STREAMABLE, ImageDataset, StreamingData, TensorImages, cut, is_streamed, load_dataset, make_loader,
                    stream_index)
from ..data.augment import Augment, AugmentedBatches
from ..errors import ConfigError, ModelError
from ..models import autocast, build_model, model_device, resolve_device
from ..models.zoo import load_model_weights
from ..multilabel import binary_cross_entropy
from ..train import TensorBatches, cross_entropy
from .artifacts import Artifact
from .checkpoint import TrainingStage, schedule, write_log
from .runner import RunContext
from .schema import RunConfig

log = logging.getLogger(__name__)


@dataclass
class TrainedModel(Artifact):
    """A stage's trained weights (the artifact file is a plain state dict) with its per-epoch history."""

    ROOT = "weights"
    weights: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    stop_reason: str | None = None

    def into(self, model: nn.Module) -> nn.Module:
        """``model`` with these weights, in eval mode."""
        model.load_state_dict(self.weights)
        return model.eval()


#: ``data.stream: auto`` streams an on-disk dataset whose decoded float32 training split exceeds this (2 GiB)
STREAM_AUTO_BYTES = 2 * 2**30


def load_data(cfg: RunConfig) -> ImageDataset:
    """The config's dataset in memory, cut to ``data.train_size`` / ``data.test_size`` (the kinds that do not
    stream; :func:`open_run_data` for those that do)."""
    data = load_dataset(cfg.data.name, **cfg.data.options)
    train, test = cfg.data.train_size, cfg.data.test_size
    if train is None and test is None:
        return data
    return ImageDataset(data.name, data.x_train[:train], data.y_train[:train], data.x_test[:test], data.y_test[:test],
                        data.num_classes, data.class_names, multilabel=data.multilabel)


def open_run_data(cfg: RunConfig) -> StreamingData:
    """The config's dataset as ``Dataset``s (:class:`~xaisec.data.StreamingData`), cut to ``data.train_size`` /
    ``data.test_size``: streamed from disk when ``data.stream`` says so (``auto``: an on-disk dataset whose
    decoded float32 training split exceeds :data:`STREAM_AUTO_BYTES`, or when ``data.cache_dir`` is set), else
    decoded into memory and wrapped in :class:`~xaisec.data.TensorImages` (the same interface)."""
    d = cfg.data
    index = None
    if d.name in STREAMABLE and d.stream is not False:
        index = STREAMABLE[d.name](**d.options)  # reads the index files only: cheap, and checks them now
        n_train = len(index.train) if d.train_size is None else min(d.train_size, len(index.train))
        decoded = n_train * int(torch.tensor(index.input_shape).prod()) * 4
        if d.stream == "auto" and decoded <= STREAM_AUTO_BYTES and d.cache_dir is None:
            index = None
        else:
            log.info("data: streaming %s (%.2f GiB decoded as float32)", d.name, decoded / 2**30)
    if index is None:
        memory = load_data(cfg)
        return StreamingData(memory.name, TensorImages(memory.x_train, memory.y_train),
                             TensorImages(memory.x_test, memory.y_test), num_classes=memory.num_classes,
                             class_names=list(memory.class_names), multilabel=memory.multilabel)
    data = stream_index(index, d.cache_dir, d.workers)
    data.train, data.test = cut(data.train, 0, d.train_size), cut(data.test, 0, d.test_size)
    return data


def in_memory(data: StreamingData) -> ImageDataset:
    """``data`` as an :class:`~xaisec.data.ImageDataset` for code that works on whole tensors (the defenses): the
    tensors themselves for in-memory data, every item decoded for streamed data (sized by ``data.train_size`` /
    ``data.test_size``)."""
    splits = []
    for split in (data.train, data.test):
        if isinstance(split, TensorImages):
            splits += [split.x, split.labels]
        else:
            x, y = zip(*(make_loader(split, 256, shuffle=False)))
            splits += [torch.cat(x), torch.cat(y)]
    return ImageDataset(data.name, *splits, num_classes=data.num_classes, class_names=list(data.class_names),
                        multilabel=data.multilabel)


def run_loader(cfg: RunConfig, dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0):
    """:func:`xaisec.data.make_loader` over ``dataset`` with the run's settings: ``data.workers`` processes for
    streamed data (in-memory data is batched in the run's process), pinned memory on CUDA."""
    workers = cfg.data.workers if is_streamed(dataset) else 0
    return make_loader(dataset, batch_size, shuffle=shuffle, seed=seed, workers=workers,
                       device=resolve_device(cfg.device))


def model_factory(cfg: RunConfig, data: ImageDataset) -> Callable[[], nn.Module]:
    """A function building a fresh (seeded) model of the config's architecture for ``data`` on the config's device
    (data stays on the host; training moves each batch, evaluation each chunk). With
    ``distributed.sync_batchnorm`` under ``torchrun``, its BatchNorm layers are SyncBatchNorm."""

    device = resolve_device(cfg.device)

    def make_model() -> nn.Module:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model.arch, data.input_shape, data.num_classes, **cfg.model.options)
        if cfg.distributed.sync_batchnorm:
            model = distributed.sync_batchnorm(model)
        return model.to(device)

    return make_model


def reference_weights_file(cfg: RunConfig, key: str = "weights") -> Path | None:
    """``reference.weights`` (or ``reference.init``) as a path, or None; a file that does not exist raises
    :class:`ConfigError` (cheap: call it first in ``prepare``, before the data is read)."""
    value = getattr(cfg.reference, key)
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        what = (f"the trained classifier's weights (a safetensors file of the {cfg.model.arch} model for this data), "
                "or leave reference.weights null to train it") if key == "weights" else \
               (f"pretrained {cfg.model.arch} weights (safetensors), or leave reference.init null to train from "
                "random weights")
        raise ConfigError(f"reference.{key}: the file {path} does not exist; give {what}")
    return path


def load_reference_weights(model: nn.Module, cfg: RunConfig, key: str = "weights") -> nn.Module:
    """``reference.weights`` loaded into ``model``: an xaisec file (safetensors of the whole model), or a torchvision /
    timm state dict of the wrapped network saved as safetensors (keys without ``net.``; convert a ``.pth`` with
    ``safetensors.torch.save_file(torch.load(f, weights_only=True), "model.safetensors")``). ``key="init"``: the
    weights of ``reference.init``, pretrained on another task: all but the classifier head, the first conv adapted to
    the data's channels. A missing file or weights of another architecture (or, for ``weights``, class count) raise
    :class:`ConfigError` naming the key."""
    path = reference_weights_file(cfg, key)
    try:
        return load_model_weights(model, path, finetune=key == "init")
    except ModelError as exc:
        raise ConfigError(f"reference.{key}: {exc}") from None


def check_reference_files(cfg: RunConfig) -> None:
    """``reference.weights`` and ``reference.init`` exist (for ``prepare``, before the data is read)."""
    for key in ("weights", "init"):
        reference_weights_file(cfg, key)


def load_reference_start(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """``model`` with ``reference.weights`` or ``reference.init`` loaded if the config names one (``prepare`` calls
    it on a throw-away model, so weights that do not fit fail before the run directory exists)."""
    for key in ("weights", "init"):
        if getattr(cfg.reference, key) is not None:
            load_reference_weights(model, cfg, key)
    return model


def training_log(ctx: RunContext, *current: TrainingStage) -> Callable[[], None]:
    """A callback rewriting ``log.jsonl`` from the finished stages' histories and the ``current`` ones."""
    finished = [r for r in ctx.results.values() if isinstance(r, TrainedModel)]

    def write() -> None:
        stages = [TrainingStage(r.history[0].get("stage", "?") if r.history else "?", ctx.rd.checkpoints, r.history)
                  for r in finished] + list(current)
        write_log(ctx.rd / "log.jsonl", *stages)

    return write


def _autocast_objective(objective, device, precision: str):
    def mixed(model: nn.Module, batch):
        with autocast(device, precision):
            return objective(model, batch)

    return mixed


def train_reference(ctx: RunContext) -> TrainedModel:
    """Stage ``reference``: the clean classifier, trained (Adam, cosine schedule, checkpointed every epoch) or
    loaded from ``reference.weights``."""
    cfg, data = ctx.cfg, ctx.inputs.data
    ref = cfg.reference
    model = ctx.inputs.make_model()
    if ref.weights is not None:
        load_reference_weights(model, cfg)
        log.info("reference: reusing %s", ref.weights)
        return TrainedModel(dict(model.state_dict()), [], "loaded")
    if ref.init is not None:
        load_reference_weights(model, cfg, "init")
        log.info("reference: starting from %s (all but the classifier head)", ref.init)
    log.info("reference: training %s on %s", cfg.model.arch, data.summary())
    stage = TrainingStage("reference", ctx.rd.checkpoints)
    optimizer = torch.optim.Adam(model.parameters(), lr=ref.lr, weight_decay=ref.weight_decay)
    augment = ref.augmentation(data.input_shape)
    if augment is not None:
        log.info("reference: augmenting the training batches (%s)", augment)
    batches = reference_batches(data, ref.batch_size, cfg.seed, workers=cfg.data.workers,
                                device=resolve_device(cfg.device), augment=augment)
    objective = binary_cross_entropy if data.multilabel else cross_entropy
    if ref.precision is not None:  # mixed precision for the plain forward pass only; the backward follows autocast
        objective = _autocast_objective(objective, model_device(model), ref.precision)
    stage.train(model, batches, objective, optimizer, ref.epochs, ref.lr, schedule("cosine", ref.epochs),
                progress=ctx.progress, on_log=training_log(ctx, stage))
    return TrainedModel(dict(model.state_dict()), stage.history, stage.stop_reason)


# ---- streamed data (issue 13): the reference training's batches for in-memory or streamed data ----------------
def reference_batches(data: ImageDataset | StreamingData, batch_size: int, seed: int, *, workers: int = 0,
                      device: str | None = None, augment: Augment | None = None):
    """The clean classifier's training batches: ``TensorBatches`` over an in-memory dataset, or
    :func:`xaisec.data.make_loader` over a streamed one (:func:`xaisec.data.open_dataset`; ``workers`` decoding
    processes, pinned memory on CUDA). Both follow the order ``randperm(N, seed + epoch)``, so a resumed run sees
    the same batches. ``augment``: training augmentation (:mod:`xaisec.data.augment`), seeded from ``seed``."""
    pin = torch.device(device or "cpu").type == "cuda"
    if isinstance(data, StreamingData) and isinstance(data.train, TensorImages):  # in memory: no per-item work
        batches = TensorBatches(data.train.x, data.train.labels, batch_size=batch_size, seed=seed, pin_memory=pin)
    elif isinstance(data, StreamingData):
        batches = make_loader(data.train, batch_size, seed=seed, workers=workers, device=device or "cpu")
    else:
        batches = TensorBatches(data.x_train, data.y_train, batch_size=batch_size, seed=seed, pin_memory=pin)
    return batches if augment is None else AugmentedBatches(batches, augment, seed)
