"""Re-BN: re-estimate BatchNorm running statistics on clean data.

Explanation-aware backdoors are fine-tuned with BatchNorm in eval mode (running statistics frozen while the
weights move; Noppel et al., Heo et al.), and the follow-up work "backdoors hide in BatchNorm" shows that the
stale statistics carry part of the manipulation: recomputing them on clean data is a cheap repair. For a
clean, normally trained model the re-estimated statistics are close to the stored ones, so a large change of
predictions or maps after Re-BN is itself evidence of tampering.

The repair works on a copy: only the BatchNorm buffers (``running_mean``, ``running_var``,
``num_batches_tracked``) of the copy differ from the input model.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..errors import ModelError
from ..models import model_device
from ..train import eval_mode
from ..validation import check_images
from .registry import DEFENSES

BATCHNORMS = (nn.modules.batchnorm._BatchNorm,)


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every BatchNorm layer that tracks running statistics."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BATCHNORMS) and m.track_running_stats]


@DEFENSES.register("rebn")
@torch.no_grad()
def rebn(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are the exact cumulative averages of the batch
    statistics over the clean images ``x`` (N,C,H,W) in [0,1] (momentum ``None``, one pass in batches of
    ``batch_size``; every other layer in eval mode, so dropout stays off). Raises if the model has no BatchNorm."""
    check_images(x, "clean images", allow_flat=True)
    layers = batchnorm_layers(model)
    if not layers:
        raise ModelError(f"{type(model).__name__} has no BatchNorm layer with running statistics; Re-BN does not apply")
    if len(x) < 2:
        raise ModelError("Re-BN needs at least 2 clean images to estimate batch statistics")
    repaired = copy.deepcopy(model)
    bns = [m for _, m in batchnorm_layers(repaired)]
    momenta = [m.momentum for m in bns]
    with eval_mode(repaired):
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
            m.train()
        # a last batch of one image has no variance: fold it into the previous batch
        batches = list(x.split(batch_size))
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches[-2:] = [torch.cat(batches[-2:])]
        device = model_device(repaired)
        for xb in batches:
            repaired(xb.to(device))
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    return repaired


def rebn_effect(model: nn.Module, x_fit: torch.Tensor, metrics: dict[str, Callable[[nn.Module], float]],
                batch_size: int = 256) -> dict[str, dict[str, float]]:
    """Re-BN on ``x_fit``, then each metric of the input model and of the repaired copy:
    ``{name: {"before", "after", "change"}}`` (the input model is untouched)."""
    repaired = rebn(model, x_fit, batch_size)
    out = {}
    for name, metric in metrics.items():
        before, after = float(metric(model)), float(metric(repaired))
        out[name] = {"before": before, "after": after, "change": after - before}
    return out


def statistics_shift(model: nn.Module, repaired: nn.Module) -> dict[str, float]:
    """Per BatchNorm layer, the mean over channels of ``|mu_old - mu_new| / sqrt(var_new)`` plus
    ``|log(var_old / var_new)| / 2``: how far the stored statistics are from the clean data's, in clean
    standard deviations (~0 for a model whose statistics came from this data distribution)."""
    old, new = dict(batchnorm_layers(model)), dict(batchnorm_layers(repaired))
    if old.keys() != new.keys():
        raise ModelError("the two models have different BatchNorm layers")
    shift = {}
    for name in old:
        mu0, var0 = old[name].running_mean, old[name].running_var
        mu1, var1 = new[name].running_mean, new[name].running_var
        eps = old[name].eps
        d = (mu0 - mu1).abs() / (var1 + eps).sqrt() + 0.5 * ((var0 + eps) / (var1 + eps)).log().abs()
        shift[name] = float(d.mean())
    return shift
