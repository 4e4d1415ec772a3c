"""Config schema of the ``adv2`` experiment (``xaisec run configs/adv2_*.yaml``); every key has a default.

Values follow the reference code scaled to small images: e.g. mnist5k needs eps 0.2 where ImageNet used 0.031.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import build, require
from ..explainers.rts_train import RTSObjective

ATTACKABLE = ("simplegrad", "cam", "gradcam", "rts", "mask")

#: per-interpreter defaults: GRAD is attacked through Softplus(beta) activations (ReLU has no second derivative);
#: RTS and MASK maps are already masks in [0,1], so they are compared as they are (min-max scaling would blow a
#: near-empty mask up into noise); MASK is attacked with a larger c (its maps move slowly through the look-ahead)
INTERPRETER_DEFAULTS: dict[str, dict[str, Any]] = {"simplegrad": {"smooth_beta": 10.0}, "rts": {"norm": "none"},
                                                   "mask": {"norm": "none", "c": 100.0}}


@dataclass
class ClassifierSettings:
    arch: str = "small_cnn"
    options: dict = field(default_factory=dict)
    epochs: int = 15
    lr: float = 3e-3
    batch_size: int = 128

    def __post_init__(self) -> None:
        require(self.epochs >= 1 and self.lr > 0 and self.batch_size >= 1, "classifier needs epochs >= 1, lr > 0, batch_size >= 1")


@dataclass
class RTSSettings:
    """The RTS saver and its adversarially trained variant RTS^A (``adversarial``), with their objective."""

    #: ``classifier``: the saver decodes the classifier's own features (the paper's RTS, :class:`FeatureSaliencyNet`);
    #: ``own``: a separately trained encoder (:class:`SaliencyNet`)
    encoder: Literal["classifier", "own"] = "classifier"
    #: the classifier layers (deep, shallow) the ``classifier`` encoder reads; empty: chosen automatically
    layers: list[str] = field(default_factory=list)
    width: int = 16
    epochs: int = 15
    lr: float = 2e-3
    batch_size: int = 64
    objective: RTSObjective = field(default_factory=RTSObjective)
    adversarial: bool = True
    adversarial_weight: float = 1.0
    #: RTS^A starts from random weights (``scratch``) or fine-tunes the trained plain RTS (``rts``); a warm start
    #: keeps the stability term from being met by the trivial empty mask early in training
    adversarial_init: Literal["scratch", "rts"] = "scratch"
    noise_levels: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])

    def __post_init__(self) -> None:
        require(self.width >= 1 and self.epochs >= 1 and self.lr > 0, "rts needs width >= 1, epochs >= 1, lr > 0")
        require(self.adversarial_weight > 0, "rts.adversarial_weight must be > 0")
        require(len(self.layers) in (0, 2), f"rts.layers names two classifier layers (deep, shallow), got {self.layers}")


@dataclass
class InterpreterSettings:
    """How one interpreter is attacked: ``weight`` in a joint attack, ``smooth_beta`` (Softplus surrogate, GRAD),
    ``c`` (overrides the attack's c), ``options`` for the explainer (e.g. mask ``steps``), MASK ``inner_steps``,
    ``norm``: the map normalisation used by the attack loss and the metrics (after ``map_pool`` pooling)."""

    weight: float = 1.0
    norm: Literal["minmax", "max", "none"] = "minmax"
    smooth_beta: float | None = None
    c: float | None = None
    options: dict = field(default_factory=dict)
    inner_steps: int = 5

    def __post_init__(self) -> None:
        require(self.weight >= 0 and (self.c is None or self.c >= 0), "interpreter weight and c must be >= 0")
        require(self.smooth_beta is None or self.smooth_beta > 0, "smooth_beta must be > 0")
        require(self.inner_steps >= 0, "inner_steps must be >= 0")


@dataclass
class PGDSettings:
    """L-inf PGD and PGD-based ADV2: ``warmup`` plain steps then ``steps - warmup`` with c ramped to ``c_end`` (2c)."""

    eps: float = 0.2
    step: float = 0.005
    steps: int = 500
    warmup: int = 100
    c: float = 10.0
    c_end: float | None = None
    prd: Literal["ce", "margin"] = "ce"
    #: as the reference code: keeps the target class's softmax below 1, so gradients (and MASK's) never vanish
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        require(0 < self.eps <= 1 and 0 < self.step <= 1, "pgd needs 0 < eps <= 1 and 0 < step <= 1")
        require(0 <= self.warmup < self.steps, "pgd needs 0 <= warmup < steps")


@dataclass
class StAdvSettings:
    """StAdv and StAdv-based ADV2 (``interpreters``: which ones, default all attacked)."""

    enabled: bool = True
    tau: float = 5e-4
    lr: float = 0.01
    steps: int = 300
    warmup: int = 100
    c: float = 10.0
    init: float = 0.2
    max_flow: float | None = None
    interpreters: list[str] | None = None

    def __post_init__(self) -> None:
        require(0 <= self.warmup < self.steps and self.lr > 0 and self.tau >= 0, "stadv needs 0 <= warmup < steps, lr > 0, tau >= 0")


@dataclass
class DetectionSettings:
    """Feature squeezing (Table 4) with the adaptive ADV2 against ``adaptive`` interpreters, and the interpreter
    ensemble detector with members ``ensemble``. Thresholds: (1 - fpr) quantile of ``calibration_images`` benign
    test images outside the attacked set."""

    enabled: bool = True
    squeezers: Any = "adv2"
    fpr: float = 0.05
    calibration_images: int = 300
    adaptive: list[str] = field(default_factory=lambda: ["rts", "mask"])
    adaptive_weight: float = 5.0
    hinge: float = 0.5
    ensemble: list[str] = field(default_factory=lambda: ["simplegrad", "cam", "rts"])
    ensemble_metric: Literal["l1", "iou"] = "l1"

    def __post_init__(self) -> None:
        require(0 < self.fpr < 1, "detection.fpr must be in (0, 1)")
        require(self.calibration_images >= 20, "detection.calibration_images must be >= 20")
        require(self.adaptive_weight > 0 and self.hinge >= 0, "adaptive_weight must be > 0 and hinge >= 0")
        require(len(self.ensemble) >= 2 or not self.ensemble, "an interpreter ensemble needs at least two members")


@dataclass
class Adv2Config:
    """The whole ``adv2`` experiment: data, classifier, interpreters, attacks, detection, metrics."""

    experiment: str = "adv2"
    name: str = "adv2"
    dataset: str = "mnist5k"
    dataset_options: dict = field(default_factory=dict)
    seed: int = 0
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    rts: RTSSettings = field(default_factory=RTSSettings)
    interpreters: list[str] = field(default_factory=lambda: list(ATTACKABLE))
    interpreter_settings: dict = field(default_factory=dict)
    n_images: int = 100
    batch_size: int = 100
    target: Literal["benign", "class", "patch"] = "class"
    patch_fraction: float = 0.15
    map_pool: int = 2
    iou_ks: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.4, 0.5])
    pgd: PGDSettings = field(default_factory=PGDSettings)
    stadv: StAdvSettings = field(default_factory=StAdvSettings)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    transfer: bool = True
    figure_images: int = 6

    def __post_init__(self) -> None:
        require(self.experiment == "adv2", f"this schema runs experiment 'adv2', not {self.experiment!r}")
        bad = [n for n in self.interpreters if n not in ATTACKABLE]
        require(not bad and self.interpreters, f"interpreters must be among {list(ATTACKABLE)}, got {self.interpreters}")
        unknown = [n for n in self.interpreter_settings if n not in ATTACKABLE]
        require(not unknown, f"interpreter_settings for unknown interpreters {unknown}; use {list(ATTACKABLE)}")
        for extra in (self.stadv.interpreters or []) + self.detection.adaptive + self.detection.ensemble:
            require(extra in self.interpreters, f"{extra!r} is used by stadv/detection but not in interpreters {self.interpreters}")
        require(self.n_images >= 1 and self.batch_size >= 1, "n_images and batch_size must be >= 1")
        require(0 < self.patch_fraction < 1, "patch_fraction must be in (0, 1)")
        require(self.map_pool >= 1 and all(0 < k < 1 for k in self.iou_ks), "map_pool >= 1 and iou_ks in (0, 1)")
        require(self.figure_images >= 1, "figure_images must be >= 1")

    def settings(self, name: str) -> InterpreterSettings:
        """Validated attack settings of interpreter ``name`` (defaults <- ``interpreter_settings[name]``)."""
        data = {**INTERPRETER_DEFAULTS.get(name, {}), **(self.interpreter_settings.get(name) or {})}
        return build(InterpreterSettings, data, f"interpreter_settings.{name}")
