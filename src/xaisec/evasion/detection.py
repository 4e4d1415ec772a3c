"""ADV2 against feature squeezing (Zhang et al. 2020, Sec. 5.3, Table 4): per-squeezer detection rates and the
adaptive attack's detector term.

Detection rates follow the paper's table: one threshold per squeezer, the (1 - fpr) quantile of that squeezer's
L1 softmax gap on benign inputs, plus the joint detector of Xu et al. (max gap over squeezers, one threshold).
The adaptive ADV2 adds ``sum_j max(0, gap_j(x) - hinge * threshold_j)`` to its loss: it pushes every gap under a
fraction of its threshold (the reference code's hinge terms), through the squeezers' straight-through gradients.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..defenses.feature_squeezing import FeatureSqueezingDetector, squeeze_gaps
from .objective import DetectorTerm


class SqueezingCalibration:
    """Per-squeezer and joint thresholds of a :class:`FeatureSqueezingDetector` fitted on benign inputs."""

    def __init__(self, detector: FeatureSqueezingDetector, x_benign: torch.Tensor):
        gaps = detector.gaps(x_benign).double()
        self.detector = detector.fit(x_benign)
        self.names = detector.squeezer_names
        self.thresholds = torch.quantile(gaps, 1 - detector.fpr, dim=0)  # (S,)
        self.benign_rates = self.rates_from(gaps)

    def rates_from(self, gaps: torch.Tensor) -> dict[str, float]:
        """Fraction flagged per squeezer and by the joint (max-gap) detector, from gaps (B, S)."""
        gaps = gaps.double()
        out = {n: (gaps[:, j] > self.thresholds[j]).double().mean().item() for j, n in enumerate(self.names)}
        out["joint"] = (gaps.amax(1) > self.detector.threshold).double().mean().item()
        return out

    def rates(self, x: torch.Tensor) -> dict[str, float]:
        return self.rates_from(self.detector.gaps(x))

    def hinge_term(self, hinge: float) -> DetectorTerm:
        """The adaptive attack's term ``(B,)``: hinge on every squeezer's gap at ``hinge`` x its threshold."""
        squeezers: Sequence = self.detector.squeezers
        limits = (hinge * self.thresholds).float()

        def term(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
            gaps = squeeze_gaps(model, x, squeezers)
            return torch.relu(gaps - limits.to(gaps)).sum(1)

        return term
