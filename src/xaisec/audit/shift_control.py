"""The shift control: the same suspects, scored by the same detectors on a model known to be clean.

The input-level checks (explanation consistency, STRIP, Activation Clustering, Spectral Signatures) flag inputs
that are unusual *for the model under audit*. An input that is unusual for *any* model of the task (a global
filter or overlay such as Fang & Choromanska's Moiré trigger, another camera, a new domain) is flagged as well, on
a clean model too: such a detector measures a shift of the input distribution, not a backdoor. The control asks
the counterfactual question directly: would a clean model of the same task flag these suspects just as often?
Only the excess over that control is evidence against the audited model.

The control model is the user's trusted ``--reference`` when there is one, else a *shift-control model*: the
audited architecture with freshly initialised parameters, trained on the audit's clean fitting images (it never
sees the audited weights, so it cannot share their backdoor). Each detector is calibrated on the same clean images
for each model (its own threshold at the same clean false-positive rate), so the detection rates are comparable.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..train import accuracy, train_classifier
from .context import AuditContext

log = logging.getLogger(__name__)

#: the control model must reach this clean accuracy to stand for "a clean model of the task"
MIN_CONTROL_ACCURACY = 0.5
#: share of the suspects that must score higher on the audited model than on the clean control (scores in robust
#: z units of each model's own clean inputs); exchangeable models give about 0.5
PAIRED_SHARE = 0.75
#: Spectral Signatures: AUROC points the audited model must add over the clean control
AUROC_EXCESS = 0.2
#: optimiser steps of the shift-control model (batch 64): enough for a small network to fit a few thousand images
SURROGATE_STEPS = 600


@dataclass
class ShiftControl:
    """``model``: the clean control (None if none could be built, with ``reason``); ``source``: ``reference`` or
    ``surrogate``; ``accuracy``: its clean accuracy on the audit's evaluation images; ``seconds`` to build it."""

    model: nn.Module | None
    source: str
    accuracy: float | None = None
    seconds: float = 0.0
    reason: str = ""


def fresh_copy(model: nn.Module) -> nn.Module | None:
    """A deep copy of ``model`` with every parameter re-initialised (``reset_parameters`` of its module), or None if
    some parameter belongs to a module that cannot reset itself (it would keep the audited, untrusted values)."""
    clone = copy.deepcopy(model)
    reset: set[int] = set()
    for module in clone.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
            reset.update(id(p) for p in module.parameters(recurse=False))
    return clone if all(id(p) in reset for p in clone.parameters()) else None


def train_surrogate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int = SURROGATE_STEPS,
                    lr: float = 3e-3, seed: int = 0, deadline: float | None = None) -> nn.Module | None:
    """The audited architecture, re-initialised and trained for about ``steps`` Adam steps (batch 64) on clean
    ``x`` (N,C,H,W) in [0,1], ``y`` (N,); training stops after the epoch that passes ``deadline``
    (``time.monotonic()``). None if the architecture cannot be re-initialised (see :func:`fresh_copy`).
    Returned in eval mode."""
    torch.manual_seed(seed)
    clone = fresh_copy(model)
    if clone is None:
        return None
    clone.requires_grad_(True)
    epochs = max(1, math.ceil(steps / math.ceil(len(x) / 64)))
    out_of_time = None if deadline is None else (lambda epoch, logs: time.monotonic() > deadline)
    train_classifier(clone, x, y, epochs=epochs, lr=lr, batch_size=64, seed=seed, progress=False,
                     on_epoch_end=out_of_time)
    return clone.eval()


def shift_control(ctx: AuditContext, deadline: float | None = None) -> ShiftControl:
    """The audit's control model, built once and cached in ``ctx.shared["shift_control"]`` (by the
    ``shift_control`` check; the input checks use it when it is there)."""
    if "shift_control" in ctx.shared:
        return ctx.shared["shift_control"]
    t0 = time.monotonic()
    if ctx.reference is not None:
        control = ShiftControl(ctx.reference.eval(), "reference")
    else:
        surrogate = train_surrogate(ctx.model, ctx.x_fit, ctx.y_fit, seed=ctx.seed, deadline=deadline)
        control = (ShiftControl(surrogate, "surrogate") if surrogate is not None else
                   ShiftControl(None, "surrogate", reason="the model has parameters outside modules that can "
                                "re-initialise themselves; give --reference for a clean control"))
    if control.model is not None:
        control.accuracy = accuracy(control.model, ctx.x_eval, ctx.y_eval)
        if control.accuracy < MIN_CONTROL_ACCURACY:
            control.reason = (f"the {control.source} control reaches only {control.accuracy:.1%} clean accuracy; "
                              "give a trusted --reference model or more --images")
            control.model = None
    control.seconds = time.monotonic() - t0
    log.debug("shift control: %s (%.1f s) %s", control.source, control.seconds, control.reason)
    ctx.shared["shift_control"] = control
    return control


def robust_z(scores: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``scores`` (N,) in robust z units of the ``clean`` scores (M,) of the same model: (s - median) / (1.4826 MAD).
    This puts two models' scores of the same suspects on one scale."""
    center = clean.median()
    scale = max(1.4826 * float((clean - center).abs().median()), 1e-6)
    return (scores - center) / scale


def paired_share(model_z: torch.Tensor, control_z: torch.Tensor) -> float:
    """Share of the suspects (paired, (N,) each) more anomalous on the audited model than on the control (ties
    count half). About 0.5 when the two models react alike to the suspects, near 1 when the audited model alone
    reacts to them."""
    return float(((model_z > control_z).float() + 0.5 * (model_z == control_z).float()).mean())


def beyond_control(share: float | None) -> bool:
    """The audited model reacts to the suspects clearly more than the clean control (True without a control:
    the check then decides alone, and says so)."""
    return share is None or share >= PAIRED_SHARE


def control_sentence(control: ShiftControl, flagged_alone: bool, share: float | None = None,
                     control_rate: float | None = None, name: str = "detected") -> str:
    """One or two sentences for a check's summary: what the clean control says about the same suspects and, when
    the check's own rule flagged them (``flagged_alone``), whether the control explains that."""
    if control.model is None:
        return f" No shift control ({control.reason}): this result may reflect unusual inputs, not the model."
    who = "the trusted reference model" if control.source == "reference" else "a clean model trained by the audit"
    text = f" On {who}, the same suspects give {control_rate:.1%} {name}" if control_rate is not None else \
        f" Compared with {who}"
    if share is not None:
        text += f"; {share:.0%} of them are more anomalous on this model than there (counts from {PAIRED_SHARE:.0%})"
    text += "."
    if flagged_alone and not beyond_control(share):
        text += (" The suspects are about as unusual for a clean model: this is a shift of the input distribution "
                 "(e.g. a global filter or a new domain), not evidence of a backdoor in this model.")
    return text


def usable_control(ctx: AuditContext) -> ShiftControl:
    """The control the ``shift_control`` check built (its ``model`` None if unusable), or a placeholder saying that
    the check did not run."""
    return ctx.shared.get("shift_control") or ShiftControl(None, "none", reason="the shift_control check did not run")
