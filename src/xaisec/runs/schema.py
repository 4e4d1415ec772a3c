"""The config sections every experiment kind shares: ``experiment``, ``name``, ``seed``, ``out``, ``threads``,
``data``, ``model`` and ``reference`` (the clean classifier). A kind's schema derives from :class:`RunConfig` and
adds its own sections; option dictionaries are checked against the signature of what they configure.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..config import require
from ..errors import ConfigError, XaisecError

#: a name that becomes a folder: letters, digits, ``._-``, not starting with a dot, at most 100 characters
_FOLDER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


def check_folder_name(value: str, where: str) -> str:
    if not isinstance(value, str) or not _FOLDER_NAME.fullmatch(value):
        raise ConfigError(f"{where} must be a plain folder name (letters, digits, '.', '_', '-'; at most 100 "
                          f"characters, not starting with '.'), got {value!r}")
    return value


def check_registry_options(registry_module: str, attr: str, name: str, options: dict, where: str,
                           given: tuple[str, ...] = ()) -> None:
    """``name`` is registered in ``registry_module.attr`` and takes every key of ``options``."""
    import importlib

    registry = getattr(importlib.import_module(registry_module), attr)
    try:
        registry.check_options(name, options, given)
    except XaisecError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass
class DataConfig:
    """``name``: a registered dataset (``xaisec list datasets``); ``options``: its loader's options (e.g. ``root``);
    ``train_size`` / ``test_size``: use only the first N images of each split (quick runs); ``stream``: read an
    on-disk dataset lazily through a DataLoader instead of decoding it into memory (:data:`STREAM_AUTO_BYTES`
    decides for ``auto``); ``workers``, ``cache_dir``: the streamed loaders' processes and decoded cache."""

    #: a registered dataset (`xaisec list datasets`)
    name: str = "mnist5k"
    #: the dataset loader's keyword options, e.g. {root: /data/cifar10} for on-disk formats
    options: dict = field(default_factory=dict)
    #: use only the first N training images (null: all)
    train_size: int | None = None
    #: use only the first N test images (null: all)
    test_size: int | None = None
    #: read the data lazily from disk (streamed) instead of decoding it into memory: auto streams an on-disk
    #: dataset (cifar10, gtsrb, cub200, chestxray14, imagefolder) whose decoded float32 training split exceeds
    #: 2 GiB, or when cache_dir is set; the embedded and npz/tabular sets are always in memory (true is an error
    #: there). Only the backdoor experiment streams; the other kinds load into memory (auto or false)
    stream: Literal["auto"] | bool = "auto"
    #: DataLoader worker processes decoding streamed images (0: in the run's process); in-memory data ignores it
    workers: int = 0
    #: folder of the decoded uint8 image cache of streamed data (reused while the files are unchanged) and of the
    #: backdoor's on-disk reference maps (attack.reference_maps: disk); null: no decoded cache, reference maps in the
    #: run directory
    cache_dir: str | None = None

    @classmethod
    def from_value(cls, value: Any, where: str) -> dict[str, Any]:
        """The short forms every command accepts (:func:`xaisec.data.parse_data_spec`): ``mnist5k``,
        ``cifar10:root=/data/cifar``, ``path/to/file.npz``, ``path/to/image_folder``."""
        from ..data import parse_data_spec

        try:
            spec = parse_data_spec(value)
        except XaisecError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return {"name": spec.name, "options": dict(spec.options)}

    def __post_init__(self) -> None:
        check_registry_options("xaisec.data", "DATASETS", self.name, self.options, "data")
        from ..data import DATASETS

        missing = DATASETS.missing_options(self.name, self.options)
        require(not missing, f"data {self.name!r} needs data.options.{missing[0] if missing else ''} (e.g. "
                             f"data.options.{missing[0] if missing else ''}=/path/to/{self.name}); nothing is downloaded")
        for key in ("train_size", "test_size"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"data.{key} must be >= 1 (or null for all), got {value}")
        from ..data import STREAMABLE

        require(self.stream is not True or self.name in STREAMABLE,
                f"data.stream: true needs an on-disk dataset ({', '.join(sorted(STREAMABLE))}); {self.name!r} is "
                "held in memory (use data.stream: auto or false)")
        require(0 <= self.workers <= 256, f"data.workers must be in [0, 256] (DataLoader worker processes), got "
                                          f"{self.workers}")
        require(self.cache_dir is None or (bool(self.cache_dir) and "\0" not in self.cache_dir),
                f"data.cache_dir must be a folder path (or null), got {self.cache_dir!r}")


@dataclass
class ModelConfig:
    """``arch``: a registered architecture (``xaisec list models``); ``options``: its factory's options."""

    #: a registered architecture (`xaisec list models`); input channels and classes come from the data
    arch: str = "small_cnn"
    #: the architecture's keyword options, e.g. {width: 16}
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_registry_options("xaisec.models", "MODELS", self.arch, self.options, "model",
                               given=("in_channels", "in_features", "num_classes"))


@dataclass
class ReferenceConfig:
    """The clean reference classifier: reuse ``weights`` (safetensors) or train it (Adam, cosine schedule), from random
    weights or from ``init`` (pretrained on another task)."""

    #: a safetensors file with trained weights to use instead of training (null: train)
    weights: str | None = None
    #: a safetensors file the training starts from, trained on another task (e.g. ImageNet weights, as Fang et al.
    #: initialise their Birds models): every layer but the classifier head is loaded (null: random initialisation)
    init: str | None = None
    #: training epochs of the clean model
    epochs: int = 8
    #: Adam learning rate at the start of the cosine schedule
    lr: float = 1e-2
    #: training batch size
    batch_size: int = 64
    #: Adam weight decay
    weight_decay: float = 0.0
    #: mixed precision of the reference training's forward pass: null (float32), bf16 (CPU or GPU) or fp16 (GPU);
    #: never used for explanation maps or their second-order terms
    precision: Literal["bf16", "fp16"] | None = None
    #: training-time augmentation of the reference model only (never at evaluation or in the attack): null or none
    #: (off), paper (random crop of the 4-px-padded image + flip up to 48 px, random resized crop + flip above:
    #: xaisec.data.augment.paper_augment), or a mapping of Augment's options {crop: pad|resized|none, padding,
    #: flip, scale: [lo, hi], ratio: [lo, hi]}
    augment: str | dict | None = None

    def __post_init__(self) -> None:
        require(self.weights is None or self.init is None, "reference.weights (use a trained model) and reference.init "
                "(start its training from pretrained weights) exclude each other; give one")
        require(1 <= self.epochs <= 100_000, f"reference.epochs must be in [1, 100000], got {self.epochs}")
        require(0 < self.lr <= 10, f"reference.lr must be in (0, 10], got {self.lr}")
        require(1 <= self.batch_size <= 1_000_000, f"reference.batch_size must be in [1, 1000000], got {self.batch_size}")
        require(0 <= self.weight_decay <= 1, f"reference.weight_decay must be in [0, 1], got {self.weight_decay}")
        require(self.augment in (None, "none", "paper") or isinstance(self.augment, dict),
                f"reference.augment must be none, paper or a mapping of augmentation options (crop, padding, flip, "
                f"scale, ratio), got {self.augment!r}")
        if isinstance(self.augment, dict):
            self.augmentation((1, 32, 32))  # options are checked now, before any data is read

    def augmentation(self, input_shape: tuple[int, ...]):
        """The :class:`~xaisec.data.augment.Augment` of ``augment`` for inputs of ``input_shape`` (None: off)."""
        from ..data.augment import Augment, paper_augment

        if self.augment is None or self.augment == "none":
            return None
        if self.augment == "paper":
            return paper_augment(input_shape)
        accepted = [f.name for f in dataclasses.fields(Augment)]
        unknown = sorted(set(self.augment) - set(accepted))
        require(not unknown, f"reference.augment has unknown keys {unknown}; it takes {', '.join(accepted)} "
                             "(or the words none / paper)")
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in self.augment.items()}
        for key in ("scale", "ratio"):
            if key not in options:
                continue
            value = options[key]
            require(isinstance(value, tuple) and len(value) == 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value),
                    f"reference.augment.{key} must be a pair [low, high] of numbers, got {self.augment[key]!r}")
        require(isinstance(options.get("flip", True), bool),
                f"reference.augment.flip must be true or false, got {options.get('flip')!r}")
        try:
            return Augment(**options)
        except XaisecError as exc:
            raise ConfigError(f"reference.augment: {exc}") from None


@dataclass
class DistributedConfig:
    """Settings that act only under ``torchrun`` with several ranks (docs/distributed.md); one process ignores them."""

    #: convert the model's BatchNorm layers to torch.nn.SyncBatchNorm for training (reference, attack, fine-tuning),
    #: so train-mode BatchNorm normalises with the whole global batch instead of each rank's slice; CUDA only
    #: (torch synchronises BatchNorm statistics of GPU tensors only)
    sync_batchnorm: bool = False


@dataclass
class RunConfig:
    """Top-level keys of every experiment kind. ``name`` (the run folder under ``out``) defaults per kind;
    ``threads``: torch CPU threads for this run (null: torch's default)."""

    #: the experiment kind (`xaisec list experiments`); it picks the schema the rest is checked against
    experiment: str = "backdoor"
    #: the run's folder name under `out` (null: the kind's default, e.g. the recipe's name); made unique
    name: str | None = None
    #: seed of every random choice of the run (model init, batches, poisoning, attacks)
    seed: int = 0
    #: parent folder of run directories (`--out` names the run directory itself)
    out: str = "runs"
    #: torch CPU threads for this run (null: torch's default, one per core). 1 by default: the small models here
    #: do not scale (a short default run on 2 cores: 16-18 s of CPU and 18-21 s wall with 1 or 2 threads); raise it
    #: for large models on many cores
    threads: int | None = 1
    #: flush subnormal floats to zero while training and attacking on CPU (much faster on many CPUs; results
    #: change only below float32's normal range); false for bit-exact comparisons with unflushed code
    flush_denormals: bool = True
    #: where models train and explain: auto (a CUDA GPU when there is one), cpu, cuda or cuda:N
    device: str = "auto"
    #: the dataset
    data: DataConfig = field(default_factory=DataConfig)
    #: the architecture
    model: ModelConfig = field(default_factory=ModelConfig)
    #: the clean (reference) model
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    #: data-parallel settings under torchrun
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    #: whether this kind reads streamed data (``data.stream``); the others hold their data in memory
    streams_data: ClassVar[bool] = False

    def default_name(self) -> str:
        return self.experiment

    def __post_init__(self) -> None:
        kind = next(f.default for f in dataclasses.fields(self) if f.name == "experiment")
        require(self.experiment == kind, f"experiment must be {kind!r} for this schema, got {self.experiment!r}")
        if self.name is None:
            self.name = self.default_name()
        check_folder_name(self.name, "name")
        require(0 <= self.seed < 2**32, f"seed must be an integer in [0, 2**32), got {self.seed}")
        require(bool(self.out) and "\0" not in self.out, f"out must be a folder path, got {self.out!r}")
        require(self.threads is None or 1 <= self.threads <= 1024, f"threads must be in [1, 1024], got {self.threads}")
        from ..models import resolve_device

        device = resolve_device(self.device)  # a GPU this machine lacks is refused now, before any work
        require(self.data.stream is not True or self.streams_data,
                f"data.stream: true is not supported by the {self.experiment} experiment, which holds its data in "
                "memory; use data.stream: auto or false (only the backdoor experiment streams)")
        require(not (self.reference.precision == "fp16" and device.type == "cpu"),
                "reference.precision fp16 needs a CUDA device; use bf16 on the CPU (or null for float32)")
        require(not (self.distributed.sync_batchnorm and device.type != "cuda"),
                f"distributed.sync_batchnorm needs CUDA devices (device resolves to {device}): torch.nn.SyncBatchNorm "
                "synchronises the statistics of GPU tensors only and raises on CPU ranks (gloo); set it to false, "
                "or run on GPUs (device: cuda)")
