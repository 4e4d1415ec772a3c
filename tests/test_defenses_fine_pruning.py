"""Fine-pruning: nested channel masks on a copy, curves over the pruned fraction, fine-tuning."""
from __future__ import annotations

import pytest
import torch

from xaisec.defenses.fine_pruning import channel_activations, fine_prune, layer_channels, pruned_copy, pruning_curve
from xaisec.errors import XaisecError
from xaisec.explainers.base import recording


def _asr(x_trig, target):
    return lambda m: float((m(x_trig).argmax(1) == target).float().mean())


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_channel_activations_are_the_mean_post_relu_activation(small_mnist, tiny_model):
    model = tiny_model(True)
    x = small_mnist[2][:40]
    with recording(model, ["features"]) as (out, _):
        model(x)
    expected = out["features"].mean((0, 2, 3))
    torch.testing.assert_close(channel_activations(model, x, batch_size=16), expected, rtol=1e-5, atol=1e-6)
    assert layer_channels(model, "features") == 16


def test_pruned_copy_zeroes_channels_and_leaves_original_untouched(small_mnist, tiny_model):
    model = tiny_model(True)
    before, x = _state(model), small_mnist[2][:8]
    pruned = pruned_copy(model, [0, 3], "features")
    with recording(pruned, ["features"]) as (out, _):
        pruned(x)
    assert out["features"][:, [0, 3]].abs().sum() == 0 and out["features"][:, 1].abs().sum() > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    assert set(pruned.state_dict()) == set(model.state_dict())  # the mask is not saved with the weights
    with pytest.raises(XaisecError, match="16 channels"):
        pruned_copy(model, [16], "features")


def test_curve_nested_monotone_and_attack_removed_before_accuracy(backdoor_target, small_mnist, stamp, tiny_model):
    model = tiny_model(True)
    before = _state(model)
    _, _, x, y = small_mnist
    x_trig = stamp(x[y != backdoor_target])
    curve = pruning_curve(model, x, y, fractions=[0.9, 0.0, 0.5, 0.25, 0.75],
                          metrics={"asr": _asr(x_trig, backdoor_target)}, progress=False)
    assert curve.fractions == sorted(curve.fractions) and curve.pruned == sorted(curve.pruned)
    assert curve.pruned[0] == 0 and curve.pruned[-1] == round(0.9 * 16)
    assert sorted(curve.order) == list(range(16))
    acts = torch.tensor(curve.mean_activation)[curve.order]
    assert (acts[1:] >= acts[:-1]).all()  # pruned in increasing order of clean activation
    assert curve.clean_accuracy[0] == pytest.approx((model(x).argmax(1) == y).float().mean().item())
    assert curve.metrics["asr"][0] > 0.9
    assert min(curve.metrics["asr"]) < curve.metrics["asr"][0]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    d = curve.to_dict()
    assert len(d["clean_accuracy"]) == 5 and 0 <= curve.fraction_at_accuracy_drop(0.05) <= 0.9


def test_fine_prune_trains_a_copy(small_mnist, tiny_model):
    model = tiny_model(True)
    before = _state(model)
    x, y, _, _ = small_mnist
    tuned = fine_prune(model, x[:256], y[:256], 0.5, epochs=1, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in tuned.state_dict().items())
    with recording(tuned, ["features"]) as (out, _):
        tuned.eval()(x[:4])
    assert (out["features"].abs().sum((0, 2, 3)) == 0).sum() >= 8  # still pruned after fine-tuning
    with pytest.raises(XaisecError, match=r"\[0, 1\)"):
        fine_prune(model, x[:16], y[:16], 1.0)
