"""Re-BN: only BatchNorm buffers change, they equal the clean data's statistics, metrics before/after."""
from __future__ import annotations

import pytest
import torch

from xaisec.defenses.rebn import batchnorm_layers, rebn, rebn_effect, statistics_shift
from xaisec.errors import XaisecError
from xaisec.models import build_model


def test_only_batchnorm_buffers_change_and_original_untouched(tiny_model):
    model = tiny_model(False).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(70, 1, 14, 14)
    repaired = rebn(model, x, batch_size=32)
    assert model.training and repaired.training  # modes as found
    bn_buffers = {f"{n}.{b}" for n, _ in batchnorm_layers(model) for b in ("running_mean", "running_var", "num_batches_tracked")}
    after = repaired.state_dict()
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v)  # the input model is untouched
        if k not in bn_buffers:
            assert torch.equal(after[k], v), k  # weights, biases, BN affine parameters unchanged
    assert any(not torch.equal(after[k], before[k]) for k in bn_buffers if "running" in k)
    for m in repaired.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.momentum == 0.1


def test_statistics_are_those_of_the_clean_data(small_mnist, tiny_model):
    model = tiny_model(False)
    x = small_mnist[0][:96]
    repaired = rebn(model, x, batch_size=96)  # one batch: exactly the data's mean and unbiased variance
    name, bn = batchnorm_layers(repaired)[0]
    # the input of the first BN is the first conv's output (BN statistics do not depend on the BN itself)
    conv = model.features[0]
    z = conv(model.normalize(x))
    torch.testing.assert_close(bn.running_mean, z.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, z.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
    shift = statistics_shift(model, repaired)
    assert set(shift) == {n for n, _ in batchnorm_layers(model)} and all(v >= 0 for v in shift.values())


def test_rebn_on_own_training_distribution_is_nearly_a_no_op_but_repairs_corrupted_statistics(small_mnist, tiny_model):
    model = tiny_model(False)
    x, y, xt, yt = small_mnist
    acc = lambda m: float((m(xt).argmax(1) == yt).float().mean())  # noqa: E731
    same = rebn_effect(model, x[:500], {"acc": acc})["acc"]
    assert abs(same["change"]) < 0.05
    broken = tiny_model(False)
    for _, bn in batchnorm_layers(broken):
        bn.running_mean.add_(0.5)  # stale statistics, as after eval-mode fine-tuning
    fixed = rebn_effect(broken, x[:500], {"acc": acc})["acc"]
    assert fixed["before"] < same["before"] - 0.1 and fixed["after"] > fixed["before"] + 0.1
    assert max(statistics_shift(broken, rebn(broken, x[:500])).values()) > max(
        statistics_shift(model, rebn(model, x[:500])).values())


def test_errors(tiny_model):
    with pytest.raises(XaisecError, match="no BatchNorm"):
        rebn(build_model("small_cnn", (1, 14, 14), 10, width=8, batchnorm=False), torch.rand(4, 1, 14, 14))
    with pytest.raises(XaisecError, match="at least 2"):
        rebn(tiny_model(False), torch.rand(1, 1, 14, 14))
