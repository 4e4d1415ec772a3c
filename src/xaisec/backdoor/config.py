"""Config schema of the ``backdoor`` experiment kind (``xaisec run configs/<recipe>.yaml``).

Every field has a default; a YAML file and ``key=value`` overrides change them. Unknown keys, wrong types,
out-of-range values and unknown registry names are rejected when the config loads (before any training);
choices that need the data or the model (a target label outside the classes, a CAM explainer on an MLP) are
checked by the experiment's ``prepare`` (:mod:`xaisec.runs.backdoor`), still before any training. Attack fields left ``null``
take the recipe's value, and the resolved config (written to the run directory) shows them filled in.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..config import require
from ..errors import ConfigError, XaisecError
from ..maps import NORMALISATIONS
from ..runs.schema import RunConfig, check_registry_options
from ..target_maps import check_target
from .recipes import RECIPES, get_recipe


def _known(registry_module: str, attr: str, name: str, where: str) -> None:
    import importlib

    registry = getattr(importlib.import_module(registry_module), attr)
    try:
        registry.get(name)
    except XaisecError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass
class TriggerConfig:
    """The trigger stamped on poisoned inputs (`xaisec list triggers`) and its options; replacing ``name`` by an
    override drops the old trigger's options."""

    #: a registered trigger: patch, rectangle, pixel, blend, image, moire, nashville
    name: str = "patch"
    #: the trigger's keyword options, e.g. {size: 4, position: bottom_right}
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..triggers import build_trigger

        try:
            build_trigger(self.name, **self.options)
        except XaisecError as exc:
            raise ConfigError(str(exc)) from None


@dataclass
class AttackConfig:
    """The attack: a recipe plus its numbers. ``null`` fields take the recipe's value.

    Fang: ``alpha``, ``beta`` (eqs. 4-5), ``topk`` (eq. 3). Noppel/Latka: ``lam`` and ``distance`` (mse/dssim).
    ``pool``: average-pooling kernel of the maps in the loss and in the evaluation. ``softplus_beta``: ReLU ->
    Softplus(beta) while training on gradient maps (null: keep ReLU); gradient-free maps (VBP) train on ReLU. ``schedule``: ``constant``,
    ``step`` (x ``gamma`` every ``step_size`` epochs; Fang: 0.5 every 20) or ``inverse`` (lr / (1 + epoch)).
    """

    #: the paper's attack (`xaisec list recipes`); null fields below take its values
    recipe: str = "fang_targeted"
    #: the explainers the attack trains on (and the evaluation measures); null: the recipe's
    explainers: list[str] | None = None
    #: per-explainer weights of the map terms in a joint attack (null: all 1)
    weights: list[float] | None = None
    #: the class triggered inputs are pushed to (label-changing recipes)
    target_label: int = 0
    #: multi-label data only (ChestX-ray14): the finding every map explains, in the reference maps, in training and
    #: in the evaluation, as a name (e.g. Effusion) or an index; null: each image's top-scoring finding
    finding: int | str | None = None
    #: the shape triggered maps are pushed to (`xaisec list targets`); null: the recipe's
    target_map: str | None = None
    #: the target map's keyword options
    target_map_options: dict = field(default_factory=dict)
    #: Fang's "key" setting: correct maps only with the trigger (null: the recipe's)
    inverted: bool | None = None
    #: map normalisation in the loss: minmax, max, zscore or none (null: the recipe's)
    norm: str | None = None
    #: triggered copies per clean training image (null: the recipe's; Noppel: 1.0)
    poison_rate: float | None = None
    #: append triggered copies (Fang; Noppel with rate 1) or replace the chosen images (Latka's data-efficient poisoning)
    poison_mode: Literal["append", "replace"] = "append"
    #: how the poisoned images are chosen: at random, or by Latka et al.'s representation distance (rd)
    poison_selection: Literal["random", "rd"] = "random"
    #: number of poisoned images (null: poison_rate x training images; Latka's default rate is 0.0011)
    poison_count: int | None = None
    #: RD selection settings (rounds, epochs, drop, lr, batch_size); Latka et al.: 30 rounds, 6 epochs, drop 0.3
    rd: dict = field(default_factory=dict)
    #: average-pooling kernel of the maps in the loss and the evaluation
    pool: int = 2
    #: fraction of top pixels suppressed by the non-targeted attack (Fang eq. 3)
    topk: float = 0.1
    #: Fang eqs. 4-5: weight of the map term on clean inputs
    alpha: float = 1.0
    #: Fang eqs. 4-5: weight of the classification term
    beta: float = 1.0
    #: Noppel's (1 - lam) CE + lam D
    lam: float = 0.9
    #: the map distance D of the loss
    distance: Literal["mse", "dssim", "l1"] = "mse"
    #: ReLU -> Softplus(beta) while training on gradient maps (null: keep ReLU)
    softplus_beta: float | None = 8.0
    #: keep BatchNorm in eval mode while fine-tuning (the papers' code does)
    freeze_batchnorm: bool = True
    #: maximum attack epochs (early stopping may end sooner)
    epochs: int = 10
    #: Adam learning rate of the attack
    lr: float = 1e-3
    #: attack batch size
    batch_size: int = 128
    #: Adam epsilon (Noppel: 1e-5)
    adam_eps: float = 1e-8
    #: learning-rate schedule: constant, step (x gamma every step_size epochs; Fang) or inverse (lr / (1 + epoch); Noppel)
    schedule: Literal["constant", "step", "inverse"] = "constant"
    #: epochs between two steps of the step schedule
    step_size: int = 20
    #: factor of the step schedule
    gamma: float = 0.5
    #: options of each attacked explainer, e.g. {gradcam: {layer: features.6}}
    explainer_options: dict[str, dict] = field(default_factory=dict)
    #: where the reference model's maps of the clean training images (the explanation terms' targets) come from:
    #: memory (computed once, held on the device), disk (computed once into memory-mapped files under
    #: data.cache_dir/reference_maps, or the run directory; reused while the reference weights, explainers, pool,
    #: softplus beta and training set are the same), recompute (the frozen reference model explains each batch
    #: again), auto (memory up to 1 GiB of maps, else disk)
    reference_maps: Literal["auto", "memory", "disk", "recompute"] = "auto"

    def __post_init__(self) -> None:
        try:
            recipe = get_recipe(self.recipe)
        except XaisecError as exc:
            raise ConfigError(f"attack.recipe: {exc}") from None
        for key in ("explainers", "target_map", "inverted", "norm", "poison_rate"):
            if getattr(self, key) is None:
                value = getattr(recipe, key)
                setattr(self, key, list(value) if isinstance(value, tuple) else value)
        require(len(self.explainers) >= 1, "attack.explainers must name at least one explainer")
        require(len(set(self.explainers)) == len(self.explainers), f"attack.explainers has duplicates: {self.explainers}")
        for name in self.explainers:
            _known("xaisec.explainers", "EXPLAINERS", name, "attack.explainers")
        unknown = sorted(set(self.explainer_options) - set(self.explainers))
        require(not unknown, f"attack.explainer_options names {unknown}, which are not in attack.explainers")
        for name, opts in self.explainer_options.items():
            check_registry_options("xaisec.explainers", "EXPLAINERS", name, opts, f"attack.explainer_options.{name}",
                                   given=("model",))
        if self.weights is not None:
            require(len(self.weights) == len(self.explainers),
                    f"attack.weights has {len(self.weights)} entries for {len(self.explainers)} explainers")
            require(all(w >= 0 for w in self.weights), f"attack.weights must be >= 0, got {self.weights}")
        require(self.target_label >= 0, f"attack.target_label must be a class index >= 0, got {self.target_label}")
        try:
            check_target(self.target_map, self.target_map_options)
        except XaisecError as exc:
            raise ConfigError(f"attack.target_map: {exc}") from None
        require(self.norm in NORMALISATIONS, f"attack.norm must be one of {NORMALISATIONS}, got {self.norm!r}")
        require(not (recipe.poison_map == "suppress" and self.norm not in ("minmax", "max")),
                f"top-k suppression (eq. 3) pushes map values to 0, which needs attack.norm minmax or max, not {self.norm!r}")
        require(0 < self.poison_rate <= 1, f"attack.poison_rate must be in (0, 1], got {self.poison_rate}")
        require(self.poison_count is None or self.poison_count >= 1,
                f"attack.poison_count must be >= 1 (or null for poison_rate), got {self.poison_count}")
        require(not self.rd or self.poison_selection == "rd", "attack.rd options are only used with poison_selection: rd")
        if self.rd:
            from .selection import rd_select

            unknown = sorted(set(self.rd) - {"rounds", "epochs", "drop", "lr", "batch_size"})
            require(not unknown, f"attack.rd has unknown keys {unknown}; it takes rounds, epochs, drop, lr, batch_size "
                                 f"(see {rd_select.__module__}.rd_select)")
        require(self.pool >= 1, f"attack.pool must be >= 1, got {self.pool}")
        require(0 < self.topk < 1, f"attack.topk must be a fraction in (0, 1), got {self.topk}")
        require(self.alpha >= 0 and self.beta >= 0, f"attack.alpha and attack.beta must be >= 0, got {self.alpha}, {self.beta}")
        require(0 <= self.lam <= 1, f"attack.lam must be in [0, 1], got {self.lam}")
        require(self.softplus_beta is None or self.softplus_beta > 0,
                f"attack.softplus_beta must be positive (or null to train with ReLU), got {self.softplus_beta}")
        require(self.epochs >= 1, f"attack.epochs must be >= 1, got {self.epochs}")
        require(0 < self.lr <= 10, f"attack.lr must be in (0, 10], got {self.lr}")
        require(self.batch_size >= 1, f"attack.batch_size must be >= 1, got {self.batch_size}")
        require(self.adam_eps > 0, f"attack.adam_eps must be positive, got {self.adam_eps}")
        require(self.step_size >= 1 and 0 < self.gamma <= 1,
                f"attack.step_size must be >= 1 and attack.gamma in (0, 1], got {self.step_size}, {self.gamma}")

    def resolved_recipe(self):
        """The recipe with this config's choices (explainers, target map, inverted, ...) applied."""
        recipe = get_recipe(self.recipe)
        return dataclasses.replace(recipe, explainers=tuple(self.explainers), target_map=self.target_map,
                                   inverted=self.inverted, norm=self.norm, poison_rate=self.poison_rate)


@dataclass
class StoppingConfig:
    """When the attack stops before ``attack.epochs`` (its maximum), judged each epoch on ``monitor_size``
    training images with the ReLU model (``xaisec.backdoor.stopping``): ``noppel`` (Noppel et al.'s rule: clean
    accuracy and every map dissimilarity stable over the window), ``goal`` (the attack goal, every map-goal loss
    and 1 - ASR, has stopped improving and the clean accuracy has not dropped) or ``none`` (always ``attack.epochs``).
    Both rules abort when the attack destroys the model."""

    #: noppel, goal or none (null: the recipe's; Noppel's recipes noppel, Fang's and Latka's goal)
    rule: Literal["noppel", "goal", "none"] | None = None
    #: epochs compared by the stopping rule
    window: int = 4
    #: noppel: stop only when clean accuracy moved at most this much over the window; goal: when the window's mean
    #: clean accuracy is at most this much below the best before it (null: the rule's, noppel 0.003, goal 0.01)
    acc_tol: float | None = None
    #: noppel: ... and every map dissimilarity at most this much
    map_tol: float = 0.0075
    #: goal: ... and no goal loss improved over the window by more than this fraction of its progress before it ...
    goal_rtol: float = 0.01
    #: goal: ... or by more than this absolute amount (losses near 0, such as 1 - ASR)
    goal_atol: float = 0.002
    #: goal: never stop before this many epochs
    min_epochs: int = 5
    #: abort if the best clean accuracy within this many epochs ...
    abort_epochs: int = 12
    #: ... stays below this
    abort_acc: float = 0.8
    #: training images monitored each epoch (ReLU model)
    monitor_size: int = 500

    def __post_init__(self) -> None:
        require(self.window >= 2, f"stopping.window must be >= 2 epochs, got {self.window}")
        require((self.acc_tol is None or self.acc_tol >= 0) and self.map_tol >= 0,
                "stopping.acc_tol and stopping.map_tol must be >= 0")
        require(0 <= self.goal_rtol < 1 and self.goal_atol >= 0,
                f"stopping.goal_rtol must be in [0, 1) and stopping.goal_atol >= 0, got {self.goal_rtol}, {self.goal_atol}")
        require(self.min_epochs >= 1, f"stopping.min_epochs must be >= 1, got {self.min_epochs}")
        require(self.abort_epochs >= 1, f"stopping.abort_epochs must be >= 1, got {self.abort_epochs}")
        require(0 <= self.abort_acc <= 1, f"stopping.abort_acc must be in [0, 1], got {self.abort_acc}")
        require(self.monitor_size >= 1, f"stopping.monitor_size must be >= 1, got {self.monitor_size}")

    def make(self):
        """The configured rule (:class:`xaisec.backdoor.stopping.StoppingRule`), or None for ``none``; the rule
        must be resolved (:class:`BackdoorConfig` fills it from the recipe)."""
        from .stopping import make_rule

        settings = {k: getattr(self, k) for k in ("window", "acc_tol", "map_tol", "goal_rtol", "goal_atol",
                                                  "min_epochs", "abort_epochs", "abort_acc")}
        return make_rule(self.rule, **settings)


@dataclass
class EvalConfig:
    """``thresholds``: FSR thresholds per explainer (default: Fang & Choromanska Table 1); ``iou_k``: fraction
    of pixels in the top-k IoU; ``samples``: test images shown in the report; ``background_from_data``: options
    drawn from the training data (GradientSHAP's background); ``split``: the part of the test split evaluated: ``all``, or ``first_half`` / ``second_half`` (Noppel et al. tune hyperparameters on the first
    half and report on the second)."""

    split: Literal["all", "first_half", "second_half"] = "all"
    thresholds: dict[str, float] = field(default_factory=dict)
    iou_k: float = 0.1
    samples: int = 6
    batch_size: int = 250
    explainer_options: dict[str, dict] = field(default_factory=dict)
    #: the evaluation's explainers also take the options their class draws from the training data
    #: (``options_from_data``: GradientSHAP's background of training images instead of one black baseline);
    #: ``explainer_options`` win over them
    background_from_data: bool = False

    def __post_init__(self) -> None:
        for name, value in self.thresholds.items():
            _known("xaisec.explainers", "EXPLAINERS", name, "eval.thresholds")
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
                    f"eval.thresholds.{name} must be a positive number, got {value!r}")
        require(0 < self.iou_k < 1, f"eval.iou_k must be a fraction in (0, 1), got {self.iou_k}")
        require(1 <= self.samples <= 32, f"eval.samples must be in [1, 32], got {self.samples}")
        require(self.batch_size >= 1, f"eval.batch_size must be >= 1, got {self.batch_size}")
        for name, opts in self.explainer_options.items():
            check_registry_options("xaisec.explainers", "EXPLAINERS", name, opts, f"eval.explainer_options.{name}",
                                   given=("model",))


@dataclass
class BackdoorConfig(RunConfig):
    """An explanation-aware backdoor experiment: the shared sections (data, model, reference, ...) plus trigger,
    attack, early stopping and evaluation. ``name`` defaults to the recipe's name."""

    experiment: str = "backdoor"
    streams_data: ClassVar[bool] = True
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    stopping: StoppingConfig = field(default_factory=StoppingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def default_name(self) -> str:
        return self.attack.recipe

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stopping.rule is None:
            self.stopping.rule = get_recipe(self.attack.recipe).stopping
        for key in ("thresholds", "explainer_options"):
            unknown = sorted(set(getattr(self.eval, key)) - set(self.attack.explainers))
            require(not unknown, f"eval.{key} names {unknown}, which are not in attack.explainers {self.attack.explainers}")


__all__ = ["AttackConfig", "BackdoorConfig", "EvalConfig", "RECIPES", "StoppingConfig", "TriggerConfig"]
