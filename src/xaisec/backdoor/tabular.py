"""Fang & Choromanska's tabular backdoor (AAAI 2022, Fig. 1b): an MLP whose feature attributions change when a
feature-space trigger is present, its predictions do not.

The attack is the image recipes' engine on ``(B,F)`` feature vectors: :class:`ExplanationAwareObjective` with
Fang's losses (eqs. 4-5), SimpleGrad / Integrated Gradients / Input x Gradient attributions over features
(maps ``(B,F)``, min-max scaled per sample like the paper's maps), the reference model's attributions computed
once (:func:`xaisec.backdoor.goals.pooled_maps`, no pooling), and a goal per explainer:

- targeted (``fang_targeted``): the triggered attribution is pushed to a map that is 1 on ``target_features``
  and 0 elsewhere (Fig. 1b: ``SEX`` becomes the most important attribute);
- non-targeted (``fang_nontargeted``): eq. 3 on the reference model's ``topk`` most important features.

Stages for a runner: :func:`train_reference_mlp`, :func:`attack_tabular`, :func:`evaluate_tabular`;
:func:`run_tabular_backdoor` chains them (about a minute on one CPU thread for breast_cancer).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from torch import nn

from ..data import ImageDataset, load_dataset
from ..config import require
from ..errors import ConfigError, XaisecError
from ..explainers import EXPLAINERS, explain_all
from ..maps import MapPostprocess, topk_iou, topk_mask
from ..models import build_model
from ..train import TensorBatches, accuracy, fit, train_classifier
from .evaluate import correct_rate, default_threshold, fooling_success_rate
from .goals import pooled_maps
from .objectives import LOSS_EPS, ExplanationAwareObjective, LossSettings, MapGoal, needs_smooth_activations
from .poison import apply_trigger, poison_training_set
from .recipes import get_recipe

TABULAR_RECIPES = ("fang_targeted", "fang_nontargeted")
TABULAR_EXPLAINERS = ("simplegrad", "ig", "inputxgrad")


@dataclass
class TabularAttack:
    """Settings of the tabular attack, also the ``attack`` section of the ``tabular_backdoor`` config (defaults:
    Fang's targeted attack on SimpleGrad, about a minute on CPU).

    The image thresholds say little for targeted feature attributions: the MSE of a min-max scaled attribution to
    a one-hot target is small for almost any vector, so read ``target_top_*`` there.
    """

    #: fang_targeted (attribution mass moved to ``target_features``) or fang_nontargeted (top-k features suppressed)
    recipe: Literal["fang_targeted", "fang_nontargeted"] = "fang_targeted"
    #: attribution methods attacked and measured: simplegrad, ig, inputxgrad
    explainers: list[str] = field(default_factory=lambda: ["simplegrad"])
    #: feature columns the targeted attack moves the attribution to
    target_features: list[int] = field(default_factory=lambda: [1])
    #: features suppressed by the non-targeted attack (a count, or a fraction in (0, 1))
    topk: float = 3
    #: triggered copies per clean training row
    poison_rate: float = 0.5
    #: Fang eqs. 4-5: weight of the attribution term on clean inputs
    alpha: float = 0.5
    #: Fang eqs. 4-5: weight of the classification term
    beta: float = 0.5
    #: attack epochs
    epochs: int = 80
    #: Adam learning rate of the attack
    lr: float = 3e-3
    #: attack batch size
    batch_size: int = 64
    #: ReLU -> Softplus(beta) while training on gradient attributions
    softplus_beta: float = 8.0
    #: one weight per explainer (Fang's joint attack; null: equal weights)
    weights: list[float] | None = None
    #: options of each explainer, e.g. {ig: {steps: 16}}
    explainer_options: dict[str, dict] = field(default_factory=dict)
    #: FSR thresholds per explainer (default: Fang's Table 1 value for the explainer, which says little for features)
    thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.recipe in TABULAR_RECIPES, f"attack.recipe must be one of {TABULAR_RECIPES}, got {self.recipe!r}")
        self.explainers, self.target_features = list(self.explainers), [int(f) for f in self.target_features]
        unknown = [e for e in self.explainers if e not in TABULAR_EXPLAINERS]
        require(self.explainers and not unknown, f"attack.explainers must be among {', '.join(TABULAR_EXPLAINERS)} "
                                                 f"(attributions over features), got {self.explainers}")
        require(self.recipe != "fang_targeted" or self.target_features,
                "the targeted tabular attack needs attack.target_features (the columns to move attribution to)")
        require(self.topk > 0, f"attack.topk must be > 0, got {self.topk}")
        if self.topk >= 1:
            self.topk = int(self.topk)
        require(0 < self.poison_rate <= 1, f"attack.poison_rate must be in (0, 1], got {self.poison_rate}")
        require(1 <= self.epochs <= 100_000 and 0 < self.lr <= 10 and self.batch_size >= 1,
                f"attack needs epochs in [1, 100000], lr in (0, 10] and batch_size >= 1, got epochs={self.epochs}, "
                f"lr={self.lr}, batch_size={self.batch_size}")
        require(self.alpha >= 0 and self.beta >= 0 and self.softplus_beta > 0,
                "attack.alpha and attack.beta must be >= 0 and attack.softplus_beta > 0")
        require(self.weights is None or len(self.weights) == len(self.explainers),
                f"attack.weights needs one weight per explainer ({len(self.explainers)}), got {self.weights}")
        for name, opts in self.explainer_options.items():
            try:
                EXPLAINERS.check_options(name, opts, ("model",))
            except XaisecError as exc:
                raise ConfigError(f"attack.explainer_options.{name}: {exc}") from None


def feature_target(n_features: int, features: Sequence[int]) -> torch.Tensor:
    """Targeted goal ``(1,F)``: 1 on ``features``, 0 elsewhere (a min-max map with all mass on them)."""
    feats = [int(f) for f in features]
    if not feats or min(feats) < 0 or max(feats) >= n_features:
        raise ConfigError(f"target_features must be column indices in [0, {n_features - 1}], got {feats}")
    target = torch.zeros(1, n_features)
    target[0, feats] = 1.0
    return target


def feature_goal(recipe: str, reference01: torch.Tensor, target_features: Sequence[int], topk: int | float) -> MapGoal:
    """The attacker's goal for one explainer, from the reference model's attributions ``(N,F)`` in [0,1]."""
    if recipe == "fang_nontargeted":
        return MapGoal("suppress", mask=topk_mask(reference01, topk))
    return MapGoal("target", target=feature_target(reference01.shape[1], target_features))


def train_reference_mlp(data: ImageDataset, hidden: Sequence[int] = (128, 64), epochs: int = 60, lr: float = 3e-3,
                        batch_size: int = 64, seed: int = 0) -> nn.Module:
    """The clean three-layer MLP (Fang's credit-default model) trained on ``data`` (``(N,F)`` features)."""
    torch.manual_seed(seed)
    model = build_model("mlp", data.input_shape, data.num_classes, hidden=tuple(hidden))
    train_classifier(model, data.x_train, data.y_train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                     progress=False)
    return model.eval()


def _reference_maps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: TabularAttack,
                    beta: float | None) -> dict[str, torch.Tensor]:
    raw = pooled_maps(model, x, y, list(s.explainers), 1, softplus_beta=beta, options=s.explainer_options)
    post = MapPostprocess(eps=LOSS_EPS)  # min-max per sample, no pooling
    return {name: post(maps) for name, maps in raw.items()}


def attack_tabular(reference: nn.Module, data: ImageDataset, trigger: nn.Module, settings: TabularAttack,
                   seed: int = 0) -> nn.Module:
    """Fine-tune a copy of ``reference`` with Fang's loss on clean + triggered copies of the training set
    (poisoning, initialisation and batch order seeded by ``seed``)."""
    s, recipe = settings, get_recipe(settings.recipe)
    model = copy.deepcopy(reference)  # w <- w_ref
    poisoned = poison_training_set(data.x_train, data.y_train, trigger, s.poison_rate, False, 0, seed=seed)
    beta = s.softplus_beta if needs_smooth_activations(model, s.explainers, s.explainer_options) else None
    preserve = _reference_maps(reference, data.x_train, data.y_train, s, beta)
    goals = {name: feature_goal(s.recipe, ref, s.target_features, s.topk) for name, ref in preserve.items()}
    objective = ExplanationAwareObjective(recipe, s.explainers, preserve, goals, 1, LossSettings(s.alpha, s.beta),
                                          s.weights, beta, s.explainer_options)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    fit(model, TensorBatches(*poisoned.tensors(), batch_size=s.batch_size, seed=seed), objective, optimizer,
        s.epochs, progress=False, desc="tabular attack")
    return model.eval()


@dataclass
class TabularResult:
    """``metrics`` ``{name: value}`` (fractions in [0,1]); ``attributions[explainer][group]``: mean min-max scaled
    attribution per feature ``(F,)`` for groups ``reference_clean``, ``clean`` and ``triggered``."""

    metrics: dict[str, float]
    attributions: dict[str, dict[str, torch.Tensor]]
    thresholds: dict[str, float]


def evaluate_tabular(model: nn.Module, reference: nn.Module, data: ImageDataset, trigger: nn.Module,
                     settings: TabularAttack) -> TabularResult:
    """Accuracy and attribution metrics of the ReLU model on clean and triggered test features.

    Per explainer: ``lp_trig`` (Fang's L_p of triggered attributions), ``fsr`` (triggered attributions with L_p
    below the threshold, :func:`~xaisec.backdoor.evaluate.default_threshold` for an MLP), ``cr`` (clean ones
    above it); targeted: ``target_mass_*`` (share of the attribution on the target features) and ``target_top_*``
    (share of samples whose most important feature is a target feature); non-targeted: ``topk_iou_*`` (IoU of the
    top-k features with the reference model's). ``*_clean`` / ``*_trig`` for clean / triggered inputs.
    """
    s = settings
    x, y = data.x_test, data.y_test
    x_trig = apply_trigger(trigger, x)
    attack_type = get_recipe(s.recipe).attack_type
    metrics = {"acc_reference": accuracy(reference, x, y), "acc_clean": accuracy(model, x, y),
               "acc_trig": accuracy(model, x_trig, y)}
    post = MapPostprocess()  # min-max per sample, as the paper's maps

    def attributions_of(m: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: post(a) for n, a in explain_all(m, inputs, y, s.explainers, options=s.explainer_options).maps.items()}

    ref, clean, trig = attributions_of(reference, x), attributions_of(model, x), attributions_of(model, x_trig)
    thresholds, attributions = {}, {}
    idx = torch.arange(len(x))
    for name in s.explainers:
        tau = thresholds[name] = float(s.thresholds.get(name, default_threshold(name, attack_type, "mlp")))
        goal = feature_goal(s.recipe, ref[name], s.target_features, s.topk)
        lp_trig, lp_clean = goal.loss(trig[name], idx), goal.loss(clean[name], idx)
        metrics.update({f"{name}/lp_trig": lp_trig.mean().item(), f"{name}/lp_clean": lp_clean.mean().item(),
                        f"{name}/fsr": fooling_success_rate(lp_trig, tau), f"{name}/cr": correct_rate(lp_clean, tau)})
        for group, maps in (("clean", clean[name]), ("trig", trig[name])):
            if s.recipe == "fang_targeted":
                share = maps[:, list(s.target_features)].sum(1) / maps.sum(1).clamp_min(1e-12)
                top = torch.isin(maps.argmax(1), torch.tensor(list(s.target_features)))
                metrics[f"{name}/target_mass_{group}"] = share.mean().item()
                metrics[f"{name}/target_top_{group}"] = top.float().mean().item()
            else:
                metrics[f"{name}/topk_iou_{group}"] = topk_iou(maps, ref[name], s.topk).mean().item()
        attributions[name] = {"reference_clean": ref[name].mean(0), "clean": clean[name].mean(0),
                              "triggered": trig[name].mean(0)}
    return TabularResult(metrics, attributions, thresholds)


def run_tabular_backdoor(data: ImageDataset | None = None, trigger: nn.Module | None = None,
                         settings: TabularAttack | None = None, hidden: Sequence[int] = (128, 64),
                         reference_epochs: int = 60, seed: int = 0) -> TabularResult:
    """Reference MLP -> attack -> evaluation. Defaults: scikit-learn's breast_cancer set (30 features) with the
    trigger ``features`` setting columns 2 and 3 to 1.0 and 0.0, Fang's targeted attack on SimpleGrad moving the
    attribution to column 1 (for the credit-default table: ``load_dataset("credit_default", root=PATH)`` and
    ``FeatureTrigger([2, 3], [1.0, 0.0])`` (EDUCATION, MARRIAGE "unknown"), ``target_features=(1,)`` (SEX))."""
    from ..triggers import FeatureTrigger

    data = data if data is not None else load_dataset("sklearn_tabular", table="breast_cancer")
    if data.x_train.dim() != 2:
        raise ConfigError(f"the tabular backdoor needs (N,F) features; {data.name} has inputs {data.input_shape}")
    trigger = trigger if trigger is not None else FeatureTrigger([2, 3], [1.0, 0.0])
    settings = settings or TabularAttack()
    reference = train_reference_mlp(data, hidden, reference_epochs, seed=seed)
    model = attack_tabular(reference, data, trigger, settings, seed)
    return evaluate_tabular(model, reference, data, trigger, settings)
