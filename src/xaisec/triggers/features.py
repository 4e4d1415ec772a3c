"""A trigger for tabular data: chosen features set to chosen values.

Fang & Choromanska (AAAI 2022, Fig. 1b) trigger their credit-default MLP by setting ``EDUCATION`` and
``MARRIAGE`` to "unknown". Inputs are feature vectors ``(B,F)`` in [0,1] (xaisec's tabular loaders scale every
feature to [0,1]), so the values are given in that scaled space.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError, DataError
from ..validation import check_images
from .base import TRIGGERS, Trigger


@TRIGGERS.register()
class FeatureTrigger(Trigger):
    """``x[:, features] = values`` on ``(B,F)`` feature vectors in [0,1].

    ``features``: distinct column indices; ``values``: one value in [0,1] for all of them or one per feature.
    :meth:`mask` is a bool ``(1,F)`` of the columns the trigger sets.
    """

    name = "features"

    def __init__(self, features: Sequence[int], values: float | Sequence[float] = 1.0):
        super().__init__()
        try:
            feats = [int(f) for f in features]
        except (TypeError, ValueError):
            raise ConfigError(f"features must be a sequence of column indices, got {features!r}") from None
        if not feats or min(feats) < 0 or len(set(feats)) != len(feats):
            raise ConfigError(f"features must be distinct, non-negative column indices (at least one), got {feats}")
        vals = [values] * len(feats) if isinstance(values, (int, float)) and not isinstance(values, bool) else values
        try:
            vals = [float(v) for v in vals]
        except (TypeError, ValueError):
            raise ConfigError(f"values must be a number or one number per feature, got {values!r}") from None
        if len(vals) != len(feats) or not all(0 <= v <= 1 for v in vals):
            raise ConfigError(f"values must be {len(feats)} number(s) in [0,1] (features are min-max scaled), "
                              f"got {values!r}")
        self.features, self.values = feats, vals

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the trigger to ``x`` ``(B,F)`` in [0,1]; returns ``(B,F)``, same dtype."""
        check_images(x, "x", allow_flat=True)
        if x.dim() != 2:
            raise DataError(f"the features trigger takes (B,F) feature vectors, got shape {tuple(x.shape)}")
        if x.min() < 0 or x.max() > 1:
            raise DataError("the features trigger needs features scaled to [0,1] (xaisec's tabular loaders do this)")
        return self.stamp(x).clamp(0.0, 1.0)

    def _check_width(self, n_features: int) -> None:
        if max(self.features) >= n_features:
            raise DataError(f"trigger feature {max(self.features)} does not exist: the data has {n_features} features")

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        self._check_width(x.shape[1])
        out = x.clone()
        out[:, self.features] = torch.tensor(self.values, dtype=x.dtype, device=x.device)
        return out

    def mask(self, shape: Sequence[int]) -> torch.Tensor:
        n_features = int(shape[-1])
        self._check_width(n_features)
        m = torch.zeros(1, n_features, dtype=torch.bool)
        m[0, self.features] = True
        return m

    def describe(self) -> str:
        pairs = ", ".join(f"{f}={v:g}" for f, v in zip(self.features, self.values))
        return f"{self.name}: features set to values ({pairs})"
