"""Tiny clean and patch-backdoored models for the defense tests, trained once per session (a few seconds).

mnist5k digits average-pooled to 14x14, a small_cnn of width 8, a white 3x3 patch in the bottom-right
corner relabelled to class 0 (BadNets) on a copy of 15% of the training images. Tests get these through the
fixtures of conftest.py (``small_mnist``, ``tiny_model``, ``stamp``, ``backdoor_target``); the module stays a module
because ``xaisec audit --model tiny_backdoor:backdoored`` imports it as a user's model file.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from xaisec.data import load_mnist5k
from xaisec.models import build_model
from xaisec.train import train_classifier

TARGET = 0


def stamp(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[..., -4:-1, -4:-1] = 1.0
    return x


@functools.lru_cache(maxsize=None)
def small_mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    data = load_mnist5k()
    down = lambda x: F.avg_pool2d(x, 2)  # noqa: E731
    return down(data.x_train[:1500]), data.y_train[:1500], down(data.x_test[:300]), data.y_test[:300]


@functools.lru_cache(maxsize=None)
def _trained(backdoor: bool, batchnorm: bool) -> dict:
    x, y, _, _ = small_mnist()
    if backdoor:
        n = int(0.15 * len(x))
        x, y = torch.cat([x, stamp(x[:n])]), torch.cat([y, torch.full((n,), TARGET)])
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 14, 14), 10, width=8, batchnorm=batchnorm)
    train_classifier(model, x, y, epochs=15, lr=5e-3, batch_size=64, progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


def tiny_model(backdoor: bool, batchnorm: bool = True) -> torch.nn.Module:
    """A fresh copy (eval mode) of the cached clean or backdoored tiny model."""
    model = build_model("small_cnn", (1, 14, 14), 10, width=8, batchnorm=batchnorm)
    model.load_state_dict(_trained(backdoor, batchnorm))
    return model.eval()


def backdoored() -> torch.nn.Module:
    """Entry point for ``xaisec audit --model tiny_backdoor:backdoored``."""
    return tiny_model(True)


def clean() -> torch.nn.Module:
    """Entry point for ``xaisec audit --model tiny_backdoor:clean``."""
    return tiny_model(False)


def mlp_14() -> torch.nn.Module:
    """An MLP for 14x14 digits: inputs of another size fail (entry point for the input-size error test)."""
    return build_model("mlp", (1, 14, 14), 10).eval()
