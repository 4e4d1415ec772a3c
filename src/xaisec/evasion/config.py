"""Config schema of the ``adv2`` experiment kind (``xaisec run adv2_mnist5k``); every key has a default.

The shared sections (``experiment``, ``name``, ``seed``, ``out``, ``threads``, ``data``, ``model``, ``reference``)
come from :class:`~xaisec.runs.schema.RunConfig`; this module adds ADV²'s own (Zhang et al., "Interpretable Deep
Learning under Fire", USENIX Security 2020). Values follow the reference code scaled to small images: e.g.
mnist5k needs eps 0.2 where ImageNet used 0.031. What an interpreter needs and how it is attacked by default is
declared by its explainer class (``attackable``, ``attack_defaults``, ``requires``, ``attack_term_type``).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import build, require
from ..errors import ConfigError, XaisecError
from ..explainers.rts_train import RTSObjective
from ..runs.schema import ReferenceConfig, RunConfig, check_registry_options

#: the fields of an attack term the experiment fills itself (the rest are a term's own options, ``term:``)
_TERM_GIVEN = ("explainer", "weight", "post", "smooth_beta", "name", "encoder_weight", "prototypes")


def explainer_class(name: str) -> type:
    """The explainer class registered as ``name`` (unknown names raise ConfigError with suggestions)."""
    from ..explainers import EXPLAINERS

    try:
        return EXPLAINERS.get(name)
    except XaisecError as exc:
        raise ConfigError(str(exc)) from None


def attackable_interpreters() -> list[str]:
    """Registered explainers ADV² can attack (their class says ``attackable = True``)."""
    from ..explainers import EXPLAINERS

    return [n for n in EXPLAINERS.names() if EXPLAINERS.get(n).attackable]


def term_options(name: str) -> list[str]:
    """The options of interpreter ``name``'s attack term (e.g. MASK's ``inner_steps``, ``refresh``)."""
    term = explainer_class(name).attack_term_type()
    return [f.name for f in dataclasses.fields(term) if f.init and f.name not in _TERM_GIVEN]


@dataclass
class RTSSettings:
    """The RTS saver and its adversarially trained variant RTS^A (``adversarial``), with their objective."""

    #: ``classifier``: the saver decodes the classifier's own features (the paper's RTS, :class:`FeatureSaliencyNet`);
    #: ``own``: a separately trained encoder (:class:`SaliencyNet`)
    encoder: Literal["classifier", "own"] = "classifier"
    #: the classifier layers (deep, shallow) the ``classifier`` encoder reads; empty: chosen automatically
    layers: list[str] = field(default_factory=list)
    #: channels of the saver's decoder
    width: int = 16
    #: training epochs of the saver (Adam, cosine schedule, checkpointed every epoch)
    epochs: int = 15
    lr: float = 2e-3
    batch_size: int = 64
    objective: RTSObjective = field(default_factory=RTSObjective)
    #: also train RTS^A (Sec. 7) and attack it (stages savers_adversarial, rts_adversarial)
    adversarial: bool = True
    #: weight of RTS^A's stability term (its ``objective.adv_weight``)
    adversarial_weight: float = 1.0
    #: RTS^A starts from random weights (``scratch``) or fine-tunes the trained plain RTS (``rts``); a warm start
    #: keeps the stability term from being met by the trivial empty mask early in training
    adversarial_init: Literal["scratch", "rts"] = "scratch"
    #: weight of ADV2's encoder loss in the attack on RTS (Sec. 4): pulls the encoder output of the adversarial input
    #: to the target class's mean over the training images; 0: the map term alone
    encoder_weight: float = 0.0
    #: noise levels (std of normal, half-width of uniform noise) at which RTS and RTS^A map changes are measured
    noise_levels: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])

    def __post_init__(self) -> None:
        require(1 <= self.width <= 1024, f"rts.width must be in [1, 1024], got {self.width}")
        require(1 <= self.epochs <= 10_000, f"rts.epochs must be in [1, 10000], got {self.epochs}")
        require(0 < self.lr <= 10, f"rts.lr must be in (0, 10], got {self.lr}")
        require(1 <= self.batch_size <= 100_000, f"rts.batch_size must be in [1, 100000], got {self.batch_size}")
        require(0 < self.adversarial_weight <= 1e6, f"rts.adversarial_weight must be in (0, 1e6], got "
                                                    f"{self.adversarial_weight}")
        require(0 <= self.encoder_weight <= 1e6, f"rts.encoder_weight must be in [0, 1e6], got {self.encoder_weight}")
        require(len(self.layers) in (0, 2), f"rts.layers names two classifier layers (deep, shallow), got {self.layers}")
        require(all(0 < v <= 1 for v in self.noise_levels), f"rts.noise_levels must be in (0, 1], got {self.noise_levels}")
        o = self.objective
        require(max(o.preserve, o.destroy, o.area, o.smooth, o.adv_weight) <= 1e6 and o.adv_eps <= 1
                and o.adv_steps <= 1000 and o.blur_sigma <= 100 and o.area_power <= 10,
                "rts.objective: weights must be <= 1e6, adv_eps <= 1, adv_steps <= 1000, blur_sigma <= 100, "
                "area_power <= 10")


@dataclass
class InterpreterSettings:
    """How one interpreter is attacked: ``weight`` in a joint attack, ``smooth_beta`` (Softplus surrogate, GRAD),
    ``c`` (overrides the attack's c when the interpreter is attacked alone), ``options`` for the explainer (e.g.
    MASK's ``steps``), ``term``: options of its attack term (e.g. MASK's ``inner_steps``), ``norm``: the map
    normalisation used by the attack loss and the metrics (after ``map_pool`` pooling). Unset keys take the
    explainer class's ``attack_defaults``."""

    weight: float = 1.0
    norm: Literal["minmax", "max", "none"] = "minmax"
    smooth_beta: float | None = None
    c: float | None = None
    options: dict = field(default_factory=dict)
    term: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(0 <= self.weight <= 1e6, f"weight must be in [0, 1e6], got {self.weight}")
        require(self.c is None or 0 <= self.c <= 1e6, f"c must be in [0, 1e6], got {self.c}")
        require(self.smooth_beta is None or 0 < self.smooth_beta <= 1e4,
                f"smooth_beta must be in (0, 1e4] (or null for ReLU), got {self.smooth_beta}")


@dataclass
class PGDSettings:
    """L-inf PGD and PGD-based ADV2: ``warmup`` plain steps then ``steps - warmup`` with c ramped to ``c_end`` (2c)."""

    #: L-inf radius (pixels in [0,1])
    eps: float = 0.2
    #: step size of the signed-gradient steps
    step: float = 0.005
    steps: int = 500
    #: plain PGD steps before the interpreter term is switched on (ADV2's stage 1)
    warmup: int = 100
    #: weight of the interpreter term, ramped to ``c_end`` (null: 2c)
    c: float = 10.0
    c_end: float | None = None
    #: the classifier term: cross-entropy towards the target class, or a margin loss
    prd: Literal["ce", "margin"] = "ce"
    #: as the reference code: keeps the target class's softmax below 1, so gradients (and MASK's) never vanish
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        require(0 < self.eps <= 1 and 0 < self.step <= 1, "pgd needs 0 < eps <= 1 and 0 < step <= 1")
        require(self.steps <= 100_000, f"pgd.steps must be <= 100000, got {self.steps}")
        require(0 <= self.warmup < self.steps, "pgd needs 0 <= warmup < steps")
        require(0 <= self.c <= 1e6 and (self.c_end is None or 0 <= self.c_end <= 1e6), "pgd.c and c_end must be in [0, 1e6]")
        require(0 <= self.label_smoothing < 1, f"pgd.label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class StAdvSettings:
    """StAdv and StAdv-based ADV2 (``interpreters``: which ones, default all attacked)."""

    enabled: bool = True
    #: weight of the flow smoothness loss
    tau: float = 5e-4
    #: Adam learning rate of the flow field
    lr: float = 0.01
    steps: int = 300
    warmup: int = 100
    c: float = 10.0
    #: scale of the random initial flow (pixels)
    init: float = 0.2
    #: bound on every flow component (pixels; null: none)
    max_flow: float | None = None
    #: the interpreters StAdv-based ADV2 attacks (null: all attacked interpreters)
    interpreters: list[str] | None = None

    def __post_init__(self) -> None:
        require(self.steps <= 100_000, f"stadv.steps must be <= 100000, got {self.steps}")
        require(0 <= self.warmup < self.steps and 0 < self.lr <= 10 and 0 <= self.tau <= 1e3,
                "stadv needs 0 <= warmup < steps, 0 < lr <= 10, 0 <= tau <= 1000")
        require(0 <= self.c <= 1e6 and 0 <= self.init <= 10, "stadv needs 0 <= c <= 1e6 and 0 <= init <= 10")
        require(self.max_flow is None or 0 < self.max_flow <= 1000, f"stadv.max_flow must be in (0, 1000] pixels, "
                                                                     f"got {self.max_flow}")


@dataclass
class DetectionSettings:
    """Feature squeezing (Table 4) with the adaptive ADV2 against ``adaptive`` interpreters, and the interpreter
    ensemble detector with members ``ensemble``. Thresholds: (1 - fpr) quantile of ``calibration_images`` benign
    test images outside the attacked set."""

    enabled: bool = True
    #: a preset (adv2, mnist, cifar10, imagenet) or a list of squeezer names and [name, {options}] pairs
    squeezers: Any = "adv2"
    #: false-positive rate on benign images that sets every threshold
    fpr: float = 0.05
    #: benign test images (outside the attacked set) that calibrate the thresholds
    calibration_images: int = 300
    #: interpreters attacked by the adaptive ADV2 (with the squeezing term)
    adaptive: list[str] = field(default_factory=lambda: ["rts", "mask"])
    #: weight of the squeezing term in the adaptive attack
    adaptive_weight: float = 5.0
    #: the adaptive attack pushes every squeezer's gap below hinge x its threshold
    hinge: float = 0.5
    #: members of the interpreter ensemble detector (at least two; empty: none)
    ensemble: list[str] = field(default_factory=lambda: ["simplegrad", "cam", "rts"])
    ensemble_metric: Literal["l1", "iou"] = "l1"

    def __post_init__(self) -> None:
        from ..defenses.feature_squeezing import build_squeezers

        require(0 < self.fpr < 1, "detection.fpr must be in (0, 1)")
        require(20 <= self.calibration_images <= 100_000, "detection.calibration_images must be in [20, 100000]")
        require(0 < self.adaptive_weight <= 1e6 and 0 <= self.hinge <= 10,
                "detection needs 0 < adaptive_weight <= 1e6 and 0 <= hinge <= 10")
        require(len(self.ensemble) >= 2 or not self.ensemble, "an interpreter ensemble needs at least two members")
        try:
            build_squeezers(self.squeezers)
        except XaisecError as exc:
            raise ConfigError(f"detection.squeezers: {exc}") from None
        except (TypeError, ValueError):
            raise ConfigError(f"detection.squeezers must be a preset (adv2, mnist, cifar10, imagenet) or a list of "
                              f"squeezer names and [name, {{options}}] pairs, got {self.squeezers!r}") from None


@dataclass
class Adv2ReferenceConfig(ReferenceConfig):
    """The clean classifier the attacks target (trained as in every kind; these defaults suit the small images)."""

    epochs: int = 15
    lr: float = 3e-3
    batch_size: int = 128


@dataclass
class Adv2Config(RunConfig):
    """The whole ``adv2`` experiment: the shared sections plus interpreters, attacks, detection and metrics."""

    experiment: str = "adv2"
    reference: Adv2ReferenceConfig = field(default_factory=Adv2ReferenceConfig)
    rts: RTSSettings = field(default_factory=RTSSettings)
    #: the attacked interpreters (explainers whose class says ``attackable``; default: all of them)
    interpreters: list[str] = field(default_factory=attackable_interpreters)
    #: {interpreter: {weight, norm, smooth_beta, c, options, term}}; unset keys take the explainer class's
    #: ``attack_defaults``; the resolved config lists every attacked interpreter's settings in full
    interpreter_settings: dict = field(default_factory=dict)
    #: how many correctly classified test images are attacked
    n_images: int = 100
    #: images per attack batch (and per batch of maps)
    batch_size: int = 100
    #: the target maps: the image's own benign map, the map of an image of the target class, or a random patch
    target: Literal["benign", "class", "patch"] = "class"
    #: the patch's share of the image (``target: patch``)
    patch_fraction: float = 0.15
    #: average-pooling kernel of the maps in the attack loss and the metrics
    map_pool: int = 2
    #: top-k fractions of the IoU curves (Figure 6)
    iou_ks: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.4, 0.5])
    pgd: PGDSettings = field(default_factory=PGDSettings)
    stadv: StAdvSettings = field(default_factory=StAdvSettings)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    #: every interpreter reads every ADV2 attack's inputs (the transfer matrix, Table 9)
    transfer: bool = True
    #: images shown in the report's figures
    figure_images: int = 6

    def __post_init__(self) -> None:
        require(self.experiment == "adv2", f"this schema runs experiment 'adv2', not {self.experiment!r}")
        super().__post_init__()
        attackable = attackable_interpreters()
        for where, names in (("interpreters", self.interpreters), ("interpreter_settings", list(self.interpreter_settings))):
            bad = [n for n in names if n not in attackable]
            if bad:
                close = difflib.get_close_matches(str(bad[0]), attackable, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{where}: {bad[0]!r} is not an explainer ADV2 can attack{hint}; attackable: "
                                  f"{attackable}")
        require(bool(self.interpreters) and len(set(self.interpreters)) == len(self.interpreters),
                f"interpreters must name at least one interpreter, each once, got {self.interpreters}")
        used = ((self.stadv.interpreters or []) if self.stadv.enabled else []) + \
            (self.detection.adaptive + self.detection.ensemble if self.detection.enabled else [])
        for extra in used:
            require(extra in self.interpreters, f"{extra!r} is used by stadv/detection but not in interpreters "
                                                f"{self.interpreters}")
        require(1 <= self.n_images <= 100_000 and 1 <= self.batch_size <= 100_000,
                "n_images and batch_size must be in [1, 100000]")
        require(0 < self.patch_fraction < 1, "patch_fraction must be in (0, 1)")
        require(1 <= self.map_pool <= 64, f"map_pool must be in [1, 64], got {self.map_pool}")
        require(bool(self.iou_ks) and all(0 < k < 1 for k in self.iou_ks), f"iou_ks must be in (0, 1), got {self.iou_ks}")
        require(1 <= self.figure_images <= 64, f"figure_images must be in [1, 64], got {self.figure_images}")
        given = {n: s for n, s in self.interpreter_settings.items()}
        for n, s in given.items():
            require(s is None or isinstance(s, dict), f"interpreter_settings.{n} must be a mapping, got {s!r}")
        self.interpreter_settings = {n: dataclasses.asdict(self._resolve(n, given.get(n) or {}))
                                     for n in dict.fromkeys([*self.interpreters, *given])}

    @staticmethod
    def _resolve(name: str, given: dict) -> InterpreterSettings:
        cls = explainer_class(name)
        where = f"interpreter_settings.{name}"
        settings = build(InterpreterSettings, {**cls.attack_defaults, **given}, where)
        check_registry_options("xaisec.explainers", "EXPLAINERS", name, settings.options, f"{where}.options",
                               given=("model", *cls.requires))
        allowed = term_options(name)
        for key in settings.term:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{where}.term: unknown key {key!r}.{hint} The {name} attack term takes "
                                  f"{', '.join(allowed) or 'no options'}")
        return settings

    def settings(self, name: str) -> InterpreterSettings:
        """Validated attack settings of interpreter ``name`` (class defaults <- ``interpreter_settings[name]``)."""
        return self._resolve(name, self.interpreter_settings.get(name) or {})

    def saver_interpreters(self) -> list[str]:
        """The attacked interpreters that need a trained saver (their class ``requires`` one)."""
        return [n for n in self.interpreters if "saver" in explainer_class(n).requires]
