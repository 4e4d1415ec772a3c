"""Input-time attacks on classifiers and their interpreters: PGD, StAdv and ADV2 (Zhang et al. 2020,
https://arxiv.org/abs/1812.00891).

>>> term = InterpreterTerm(build("cam", model))
>>> x_adv = Adv2PGD(model, [term], eps=0.2, step=0.01, steps=400, warmup=100, c=10)(x, y_target, target_maps=maps)

The ``adv2`` experiment kind (``xaisec run adv2_mnist5k``) is :mod:`xaisec.runs.adv2`; its config schema is
:mod:`.config`, its flat metric records :mod:`.results` and its report (rebuilt from the run directory) :mod:`.report`.
"""
from __future__ import annotations

from .base import ATTACKS, Attack, BestIterate, RampSchedule, Terms
from .metrics import map_metrics, perturbation_metrics, prediction_metrics, success
from .objective import AttackObjective, InterpreterTerm, MaskTerm, RTSTerm
from .pgd import PGD, Adv2PGD, project_linf
from .stadv import StAdv, Adv2StAdv, flow_loss, warp
from .targets import TARGET_KINDS, patch_maps, pick_class_examples, random_target_classes


__all__ = ["ATTACKS", "Adv2PGD", "Adv2StAdv", "Attack", "AttackObjective", "BestIterate", "InterpreterTerm", "MaskTerm", "PGD", "RTSTerm",
           "RampSchedule", "StAdv", "TARGET_KINDS", "Terms", "flow_loss", "map_metrics", "patch_maps",
           "perturbation_metrics", "pick_class_examples", "prediction_metrics", "project_linf",
           "random_target_classes", "success", "warp"]
