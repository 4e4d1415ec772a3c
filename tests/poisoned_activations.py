"""Shared test data for the poison detectors that read hidden activations (AC, spectral signatures)."""
from __future__ import annotations

import torch
from torch import nn


class HiddenNet(nn.Module):
    """The hidden layer is the last child, so ART's PyTorchClassifier takes it as the last hidden layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(24, 3)
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(32, 24), nn.ReLU())

    def forward(self, x):
        return self.head(self.features(x))


def clustered_inputs(n: int, poison_fraction: float, strength: float):
    """``(model, x (n,1,4,8), y, is_poisoned)``: 3 classes; poisoned inputs carry a strong shared offset."""
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 3
    x = (torch.randn(3, 32, generator=g) * 2)[y] + torch.randn(n, 32, generator=g)
    is_poisoned = torch.rand(n, generator=g) < poison_fraction
    x[is_poisoned] += strength * torch.randn(32, generator=g).abs()
    return HiddenNet().eval(), x.view(n, 1, 4, 8), y, is_poisoned
