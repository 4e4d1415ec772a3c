"""The training loop, batching and evaluation helpers."""
from __future__ import annotations

import pytest
import torch

from xaisec.data import load_dataset
from xaisec.models import build_model
from xaisec.train import TensorBatches, accuracy, cross_entropy, fit, train_classifier


def test_tensor_batches_reshuffle_per_epoch_and_are_reproducible():
    x = torch.arange(10)
    b = TensorBatches(x, batch_size=4, seed=1)
    first = torch.cat([t for (t,) in b])
    assert sorted(first.tolist()) == list(range(10)) and len(b) == 3
    b.set_epoch(1)
    second = torch.cat([t for (t,) in b])
    assert not torch.equal(first, second)
    b.set_epoch(0)
    assert torch.equal(torch.cat([t for (t,) in b]), first)


def test_training_learns_mnist_and_restores_modes():
    data = load_dataset("mnist5k")
    model = build_model("small_cnn", data.input_shape, 10, width=16)
    model.eval()
    history = train_classifier(model, data.x_train, data.y_train, epochs=4, lr=1e-2, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    assert not model.training
    assert accuracy(model, data.x_test, data.y_test) > 0.75
    assert accuracy(model, data.x_test, data.y_test, top=5) > accuracy(model, data.x_test, data.y_test)


def test_fit_freezes_batchnorm_and_stops_early():
    model = build_model("small_cnn", (1, 12, 12), 3, width=8)
    stats = model.features[1].running_mean.clone()
    x, y = torch.rand(32, 1, 12, 12), torch.randint(0, 3, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []
    fit(model, TensorBatches(x, y, batch_size=8), cross_entropy, opt, epochs=5, freeze_batchnorm=True,
        on_epoch_end=lambda e, logs: seen.append(e) or e == 1, progress=False)
    assert seen == [0, 1]
    torch.testing.assert_close(model.features[1].running_mean, stats)


def test_fit_refuses_nan_loss():
    model = build_model("small_cnn", (1, 12, 12), 3, width=8)
    bad = lambda m, batch: type(cross_entropy(m, batch))(torch.tensor(float("nan"), requires_grad=True))  # noqa: E731
    with pytest.raises(FloatingPointError, match="learning rate"):
        fit(model, TensorBatches(torch.rand(4, 1, 12, 12), torch.zeros(4, dtype=torch.long)), bad,
            torch.optim.SGD(model.parameters(), lr=0.1), 1, progress=False)


def test_tensor_batches_pinned_memory_gives_the_same_batches():
    """``pin_memory`` only changes where a batch lives (page-locked, on a machine with CUDA), never its content."""
    x, y = torch.arange(20.0).view(10, 2), torch.arange(10)
    plain = list(TensorBatches(x, y, batch_size=4, seed=3))
    pinned = TensorBatches(x, y, batch_size=4, seed=3, pin_memory=True)
    assert pinned.pin_memory == torch.cuda.is_available()
    for a, b in zip(plain, pinned, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        assert all(v.is_pinned() == torch.cuda.is_available() for v in b)
