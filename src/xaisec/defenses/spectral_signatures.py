"""Spectral Signatures (Tran, Li, Madry, NeurIPS 2018, https://arxiv.org/abs/1811.00636).

Per class: centre the representations ``R`` (n,D), take the top right singular vector ``v`` of
the centred matrix, score each sample by its squared projection ``((R_i - mean) . v)^2``
(Algorithm 1), and remove the ``eps_multiplier * expected_poison_fraction`` highest-scoring
share of the class.

``centered=False`` reproduces ``art.defences.detector.poison.SpectralSignatureDefense``, which
projects the *uncentred* representations (ART's score is ``|R_i . v|``; ours is its square, so
ranking and flags are the same). The cut-off is ART's: the ``1 - eps_multiplier * expected``
quantile of the class's scores (linear interpolation), keeping samples strictly below it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DataError
from ..validation import check_finite, check_number
from .registry import DEFENSES


def spectral_scores(reps: torch.Tensor, centered: bool = True) -> torch.Tensor:
    """Outlier scores (n,) of one class's representations (n,D), computed in float64."""
    r = reps.detach().double()
    centred = r - r.mean(0, keepdim=True)
    v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    return ((centred if centered else r) @ v).square()


@dataclass
class SpectralResult:
    """Per-sample scores (N,) and removal flags (N,) bool, with the per-class score cut-offs."""

    scores: torch.Tensor
    is_poison: torch.Tensor
    cutoffs: dict[int, float]


@DEFENSES.register("spectral_signatures")
def spectral_signatures(reps: torch.Tensor, labels: torch.Tensor, expected_poison_fraction: float = 0.33,
                        eps_multiplier: float = 1.5, centered: bool = True) -> SpectralResult:
    """Score representations (N,D) per label (N,) and flag the top-scoring share of each class.

    Defaults are ART's (``expected_pp_poison=0.33``, ``eps_multiplier=1.5``); Tran et al. remove
    1.5 times the expected number of poisoned samples, as here.
    """
    expected_poison_fraction = check_number(expected_poison_fraction, "expected_poison_fraction", low=0, high=1)
    eps_multiplier = check_number(eps_multiplier, "eps_multiplier", low=0)
    if isinstance(reps, torch.Tensor):
        check_finite(reps, "representations")
    if reps.dim() != 2:
        raise DataError(f"representations must be (N, D), got shape {tuple(reps.shape)}; flatten them first")
    labels = torch.as_tensor(labels, device=reps.device)
    if labels.shape != (reps.shape[0],) or labels.dtype.is_floating_point:
        raise DataError(f"labels must be integer class indices of shape ({reps.shape[0]},), got {tuple(labels.shape)}")
    scores = torch.zeros(reps.shape[0], dtype=torch.float64, device=reps.device)
    flags = torch.zeros(reps.shape[0], dtype=torch.bool, device=reps.device)
    keep_quantile = max(1 - eps_multiplier * expected_poison_fraction, 0.0)
    cutoffs = {}
    for label in labels.unique().tolist():
        idx = (labels == label).nonzero().squeeze(1)
        s = spectral_scores(reps[idx], centered)
        cutoff = torch.quantile(s, keep_quantile)
        scores[idx], flags[idx] = s, s >= cutoff
        cutoffs[int(label)] = float(cutoff)
    return SpectralResult(scores, flags, cutoffs)
