"""Noppel et al.'s explanation metric, as their code computes it, beside xaisec's pooled min-max MSE.

Noppel, Peter and Wressnegger ("Disguising Attacks with Explanation-Aware Backdoors", IEEE S&P 2023) compare
explanations by the MSE of maps that are z-scored per image, ``(e - mean) / sqrt(var + 1e-5)``, and
max-aggregated over channels; Table 1 reports its mean ± std over the second half of the test set (the first half
tunes the hyperparameters). xaisec's own ``mse_ref_*`` metrics compare average-pooled, min-max scaled maps
(Fang & Choromanska's pipeline, :mod:`xaisec.backdoor.evaluate`); the two are not on the same scale.
Fang & Choromanska's own definitions (per-architecture FSR thresholds, the joint attack's averaged FSR, eq. 3's
sum) are in :mod:`xaisec.backdoor.evaluate` and :func:`xaisec.backdoor.objectives.suppression_loss`.
"""
from __future__ import annotations

import torch

from ..errors import DataError
from ..maps import distance, normalize


def noppel_standardise(maps: torch.Tensor) -> torch.Tensor:
    """Raw maps ``(B,C,H,W)`` z-scored per image over all their values, then the max over channels: ``(B,1,H,W)``
    (flat ``(B,F)`` maps are only z-scored)."""
    z = normalize(maps, "zscore")
    return z.amax(1, keepdim=True) if z.dim() == 4 else z


def noppel_mse(maps: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image MSE ``(B,)`` between :func:`noppel_standardise`-d ``maps`` and ``reference`` (same shape)."""
    if maps.shape != reference.shape:
        raise DataError(f"maps {tuple(maps.shape)} and reference maps {tuple(reference.shape)} differ in shape")
    return distance(noppel_standardise(maps), noppel_standardise(reference), "mse")


def noppel_mse_summary(maps: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """``(mean, std)`` of :func:`noppel_mse` over the batch (population std), as Table 1 reports it."""
    d = noppel_mse(maps.detach().float(), reference.detach().float())
    return d.mean().item(), d.std(unbiased=False).item() if len(d) > 1 else 0.0


def split_test_halves(n: int) -> tuple[slice, slice]:
    """``(tune, report)``: Noppel et al. tune on the first half of the ``n`` test samples and report on the
    second (the middle sample goes to the report half when ``n`` is odd)."""
    if n < 2:
        raise DataError(f"splitting the test set in halves needs at least 2 samples, got {n}")
    return slice(0, n // 2), slice(n // 2, n)
