"""Attacks and defenses leave the model as they found it: modes, parameters, gradients, buffers and hooks,
also when they raise half-way (the explainers' own checks live in test_explainers.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xaisec.defenses import (ExplanationConsistency, FeatureSqueezingDetector, InterpreterEnsembleDetector,
                             STRIPDetector, collect_activations, neural_cleanse, pruning_curve, rebn)
from xaisec.evasion import PGD, Adv2PGD, InterpreterTerm, StAdv
from xaisec.errors import DataError
from xaisec.explainers import build


def snapshot(model: nn.Module) -> dict:
    return {
        "modes": [m.training for m in model.modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
        "modules": [type(m) for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"] and after["hooks"] == before["hooks"]
    assert after["modules"] == before["modules"] and after["requires_grad"] == before["requires_grad"]
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    for a, b in zip(after["grads"], before["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)


def suspect_model(tiny_cnn) -> nn.Module:
    """A tiny BN model in *train* mode with stale .grad values: the hardest state to leave untouched."""
    model = tiny_cnn(batchnorm=True, num_classes=3).train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    return model


X = torch.rand(6, 1, 12, 12)
Y = torch.tensor([0, 1, 2, 0, 1, 2])


def _adv2(model):
    term = InterpreterTerm(build("gradcam", model))
    maps = {"gradcam": torch.rand(6, 1, 12, 12)}
    return Adv2PGD(model, [term], eps=0.1, step=0.02, steps=3, warmup=1, c=1.0)(X, Y, target_maps=maps)


USES = {
    "pgd": lambda m: PGD(m, eps=0.1, step=0.02, steps=3)(X, Y),
    "stadv": lambda m: StAdv(m, steps=3)(X, Y),
    "adv2_pgd_gradcam": _adv2,
    "neural_cleanse": lambda m: neural_cleanse(m, X, 3, epochs=1, batch_size=6, progress=False),
    "pruning_curve": lambda m: pruning_curve(m, X, Y, fractions=(0.0, 0.5), progress=False),
    "rebn": lambda m: rebn(m, X),
    "strip": lambda m: STRIPDetector(m, n=4).fit(X).score(X),
    "feature_squeezing": lambda m: FeatureSqueezingDetector(m).fit(X).score(X),
    "interpreter_ensemble": lambda m: InterpreterEnsembleDetector(
        m, {"gradcam": build("gradcam", m), "vbp": build("vbp", m)}).fit(X).score(X),
    "explanation_consistency": lambda m: ExplanationConsistency(m, methods=("gradcam", "simplegrad")).fit(X).score(X),
    "collect_activations": lambda m: collect_activations(m, m.cam_layer, X),
}


@pytest.mark.parametrize("use", sorted(USES))
def test_model_left_as_found(use, tiny_cnn):
    model = suspect_model(tiny_cnn)
    before = snapshot(model)
    USES[use](model)
    assert_unchanged(model, before)


class FailOnCall(nn.Module):
    """Wraps a model and raises on its ``n``-th forward call (in the middle of an attack or a defense)."""

    def __init__(self, inner: nn.Module, n: int | None):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0
        self.cam_layer, self.head = "inner.features", inner.head

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("failure in the middle")
        return self.inner(x)


@pytest.mark.parametrize("use", sorted(USES))
def test_model_left_as_found_when_interrupted(use, tiny_cnn):
    counting = FailOnCall(suspect_model(tiny_cnn), n=None)
    USES[use](counting)
    model = FailOnCall(suspect_model(tiny_cnn), n=counting.calls // 2 + 1)  # fail half-way through
    before = snapshot(model.inner)
    with pytest.raises((RuntimeError, DataError), match="failure in the middle"):  # DataError: named and chained
        USES[use](model)
    assert_unchanged(model.inner, before)
