"""Explanation-aware backdoors: one training engine, the papers' attacks as named recipes.

>>> from xaisec.backdoor import BackdoorConfig
>>> from xaisec.runs import run_experiment
>>> run_experiment(BackdoorConfig(), "runs/demo").metrics   # Fang's targeted attack on Grad-CAM, mnist5k, small_cnn

Modules: ``recipes`` (the attacks as data), ``objectives`` (losses, Fang/Noppel normalisations), ``goals``
(reference maps computed once, target maps), ``poison`` (poisoned training sets), ``selection`` (which images
to poison: random or representation distance), ``evaluate`` (metrics), ``paper_metrics`` (Noppel's own MSE),
``tabular`` and ``tabular_figures`` (Fang's tabular MLP backdoor),
``stopping`` (Noppel's early stopping), ``results`` (evaluation outputs), ``config`` (schema), ``report``
(report.html). The experiment kind that runs them is :mod:`xaisec.runs.backdoor`.
"""
from .config import BackdoorConfig
from .objectives import ExplanationAwareObjective, LossSettings, MapGoal, fang_clean, fang_poisoned, noppel_loss
from .poison import PoisonedSet, poison_training_set
from .recipes import RECIPES, Recipe, get_recipe
from .selection import random_select, rd_select, select_indices

__all__ = ["BackdoorConfig", "ExplanationAwareObjective", "LossSettings", "MapGoal", "PoisonedSet", "RECIPES", "Recipe",
           "fang_clean", "fang_poisoned", "get_recipe", "noppel_loss", "poison_training_set", "random_select", "rd_select",
           "select_indices"]
