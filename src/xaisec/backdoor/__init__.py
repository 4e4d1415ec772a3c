"""Explanation-aware backdoors: one training engine, the papers' attacks as named recipes.

>>> from xaisec.backdoor import RECIPES, run_backdoor, BackdoorConfig
>>> run_backdoor(BackdoorConfig(), "runs/demo")     # Fang's targeted attack on Grad-CAM, mnist5k, small_cnn

Modules: ``recipes`` (the attacks as data), ``objectives`` (losses, Fang/Noppel normalisations), ``goals``
(reference maps computed once, target maps), ``poison`` (poisoned training sets), ``evaluate`` (metrics),
``stopping`` (Noppel's early stopping), ``stages`` (checkpointed training), ``results`` (evaluation outputs),
``config`` (schema), ``experiment`` (the runner), ``report`` (report.html).
"""
from .config import BackdoorConfig
from .experiment import prepare, run_backdoor
from .objectives import ExplanationAwareObjective, LossSettings, MapGoal, fang_clean, fang_poisoned, noppel_loss
from .poison import PoisonedSet, poison_training_set
from .recipes import RECIPES, Recipe, get_recipe

__all__ = ["BackdoorConfig", "ExplanationAwareObjective", "LossSettings", "MapGoal", "PoisonedSet", "RECIPES", "Recipe",
           "fang_clean", "fang_poisoned", "get_recipe", "noppel_loss", "poison_training_set", "prepare", "run_backdoor"]
