"""The config sections every experiment kind shares: ``experiment``, ``name``, ``seed``, ``out``, ``threads``,
``data``, ``model`` and ``reference`` (the clean classifier). A kind's schema derives from :class:`RunConfig` and
adds its own sections; option dictionaries are checked against the signature of what they configure.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

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
    ``train_size`` / ``test_size``: use only the first N images of each split (quick runs)."""

    #: a registered dataset (`xaisec list datasets`)
    name: str = "mnist5k"
    #: the dataset loader's keyword options, e.g. {root: /data/cifar10} for on-disk formats
    options: dict = field(default_factory=dict)
    #: use only the first N training images (null: all)
    train_size: int | None = None
    #: use only the first N test images (null: all)
    test_size: int | None = None

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

    def __post_init__(self) -> None:
        require(self.weights is None or self.init is None, "reference.weights (use a trained model) and reference.init "
                "(start its training from pretrained weights) exclude each other; give one")
        require(1 <= self.epochs <= 100_000, f"reference.epochs must be in [1, 100000], got {self.epochs}")
        require(0 < self.lr <= 10, f"reference.lr must be in (0, 10], got {self.lr}")
        require(1 <= self.batch_size <= 1_000_000, f"reference.batch_size must be in [1, 1000000], got {self.batch_size}")
        require(0 <= self.weight_decay <= 1, f"reference.weight_decay must be in [0, 1], got {self.weight_decay}")


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
    #: torch CPU threads for this run (null: torch's default, one per core). 1 by default: on 2 cores the default
    #: run took 173 s with 1 thread and 602 s with 2 (flushing subnormals only reaches the calling thread, and the
    #: small models here do not scale); raise it for large models on many cores
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
        require(not (self.reference.precision == "fp16" and device.type == "cpu"),
                "reference.precision fp16 needs a CUDA device; use bf16 on the CPU (or null for float32)")
