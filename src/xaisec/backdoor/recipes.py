"""The papers' backdoor attacks as named recipes: data, not code paths.

A recipe answers a few questions (DESIGN.md, "Objective"): which label a poisoned sample carries, which map its
explanation is pushed to, whether clean maps are kept equal to the reference model's, which loss normalisation
applies, and whether the setting is inverted. :mod:`xaisec.backdoor.objectives` turns any combination into one
training objective, so a new recipe is one more entry here.

- Fang & Choromanska (AAAI 2022): ``fang_targeted`` (eq. 2, border frame), ``fang_nontargeted`` (eq. 3, top-k
  suppression), ``fang_joint`` (weighted sum of L_p over several explainers), ``fang_inverted`` (the "key" setting:
  losses swapped, correct maps only with the trigger). Loss eqs. 4-5.
- Noppel et al. (IEEE S&P 2023): ``noppel_ep`` (explanation-preserving: target label + the clean map),
  ``noppel_pp`` (prediction-preserving: true label + a target map), ``noppel_dual`` (target label + target map).
  Loss ``(1-λ)·CE + λ·D``, their early-stopping rule (the other recipes stop when the attack goal converges).
- Latka et al. ("Stealthy Sabotage"): ``latka_badnets`` (vanilla backdoor, no explanation term), ``latka_fooling`` (true
  label, map forced to a shape), ``latka_full_disguise`` (= explanation-preserving).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..registry import Registry

RECIPES = Registry("recipe")

PoisonLabel = Literal["keep", "target"]
#: what poisoned maps are trained towards: nothing, the reference model's clean map, a target map, or Fang's
#: eq. 3 (the reference map's top-k pixels suppressed)
PoisonMap = Literal["none", "reference", "target", "suppress"]
LossKind = Literal["fang", "noppel", "ce"]


@dataclass(frozen=True)
class Recipe:
    """One attack of the papers, as the answers to a few choices (see the module docstring)."""

    name: str
    paper: str
    summary: str
    poison_label: PoisonLabel
    poison_map: PoisonMap
    clean_map: bool  # keep clean maps equal to the reference model's (Fang's L_s, Noppel's clean part)
    loss: LossKind
    inverted: bool = False  # Fang's key setting: the map-changing loss applies to clean inputs instead
    target_map: str = "border"  # used when poison_map == "target"
    explainers: tuple[str, ...] = ("gradcam",)
    norm: str = "minmax"  # map normalisation inside the loss
    stopping: str = "goal"  # stopping.rule: Noppel et al.'s rule for their recipes, goal convergence otherwise
    poison_rate: float = 0.5  # triggered copies appended, as a fraction of the clean training set

    @property
    def changes_labels(self) -> bool:
        return self.poison_label == "target"

    @property
    def changes_maps(self) -> bool:
        """Whether the attacker's map goal differs from the clean map (FSR/CR apply)."""
        return self.poison_map in ("target", "suppress")

    @property
    def explanation_aware(self) -> bool:
        return self.loss != "ce"

    @property
    def attack_type(self) -> str:
        """Fang's Table 1 column: ``non-targeted`` for top-k suppression, else ``targeted`` (sets FSR thresholds)."""
        return "non-targeted" if self.poison_map == "suppress" else "targeted"


def _register(recipe: Recipe) -> Recipe:
    RECIPES.register(recipe.name)(lambda: recipe)
    return recipe


FANG = "Fang & Choromanska, \"Backdoor Attacks on the DNN Interpretation System\", AAAI 2022"
NOPPEL = "Noppel, Peter & Wressnegger, \"Disguising Attacks with Explanation-Aware Backdoors\", IEEE S&P 2023"
LATKA = "Latka et al., \"Stealthy Sabotage: Backdoor Attacks against Explainable Machine Learning\""

for _r in (
    Recipe("fang_targeted", FANG, "triggered maps pushed to a border frame (eq. 2); clean maps kept (eq. 1)",
           poison_label="keep", poison_map="target", clean_map=True, loss="fang", target_map="border"),
    Recipe("fang_nontargeted", FANG, "the reference map's top-k pixels suppressed on triggered inputs (eq. 3)",
           poison_label="keep", poison_map="suppress", clean_map=True, loss="fang"),
    Recipe("fang_joint", FANG, "targeted attack on Grad-CAM, SimpleGrad and VBP at once (weighted sum of L_p)",
           poison_label="keep", poison_map="target", clean_map=True, loss="fang", target_map="border",
           explainers=("gradcam", "simplegrad", "vbp")),
    Recipe("fang_inverted", FANG, "key setting: maps are wrong without the trigger and correct with it",
           poison_label="keep", poison_map="target", clean_map=True, loss="fang", target_map="border", inverted=True),
    Recipe("noppel_ep", NOPPEL, "explanation-preserving: target label, triggered maps equal the clean maps",
           poison_label="target", poison_map="reference", clean_map=True, loss="noppel", norm="zscore",
           stopping="noppel", poison_rate=1.0),
    Recipe("noppel_pp", NOPPEL, "prediction-preserving: true label, triggered maps pushed to a target map",
           poison_label="keep", poison_map="target", clean_map=True, loss="noppel", target_map="triangle",
           norm="zscore", stopping="noppel", poison_rate=1.0),
    Recipe("noppel_dual", NOPPEL, "dual: target label and a target map on triggered inputs",
           poison_label="target", poison_map="target", clean_map=True, loss="noppel", target_map="triangle",
           norm="zscore", stopping="noppel", poison_rate=1.0),
    Recipe("latka_badnets", LATKA, "vanilla BadNets backdoor (no explanation term): the baseline",
           poison_label="target", poison_map="none", clean_map=False, loss="ce", explainers=("gradcam",),
           poison_rate=0.1),
    Recipe("latka_fooling", LATKA, "true label, triggered maps forced to a shape",
           poison_label="keep", poison_map="target", clean_map=True, loss="noppel", target_map="square",
           norm="minmax", poison_rate=1.0),
    Recipe("latka_full_disguise", LATKA, "full disguise (= explanation-preserving): target label, clean-looking maps",
           poison_label="target", poison_map="reference", clean_map=True, loss="noppel", norm="minmax",
           poison_rate=1.0),
):
    _register(_r)


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name`` (unknown names raise with suggestions)."""
    return RECIPES.get(name)()
