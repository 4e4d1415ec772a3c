"""Shared fixtures: tiny models (eval mode) and inputs; everything CPU and seconds."""
from __future__ import annotations

import pytest
import torch

from xaisec.models import build_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_cnn(dtype=torch.float32, in_channels: int = 1, num_classes: int = 4, batchnorm: bool = False):
    """A small_cnn with 4/8 channels: fast, smooth enough for finite differences, all code paths of a ConvNet."""
    model = build_model("small_cnn", (in_channels, 12, 12), num_classes, width=8, batchnorm=batchnorm)
    return model.to(dtype).eval()


@pytest.fixture
def cnn():
    return tiny_cnn()


@pytest.fixture
def resnet():
    return build_model("resnet20", (3, 16, 16), 5, width=4, blocks_per_stage=1).eval()


@pytest.fixture
def images():
    return torch.rand(5, 1, 12, 12)
