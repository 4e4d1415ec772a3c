"""Poisoned training sets: Fang-style mixing at a rate, Noppel-style duplicate of every image."""
from __future__ import annotations

import pytest
import torch

from xaisec.backdoor.poison import apply_trigger, poison_training_set
from xaisec.errors import ConfigError
from xaisec.triggers import build_trigger


@pytest.fixture
def clean():
    return torch.rand(20, 1, 8, 8) * 0.9, torch.arange(20) % 4


def test_fang_mixing(clean):
    x, y = clean
    trigger = build_trigger("patch", size=2)
    data = poison_training_set(x, y, trigger, rate=0.25, relabel=False, target_label=3, seed=1)
    assert len(data) == 25 and data.poisoned.sum() == 5
    assert torch.equal(data.x[:20], x) and not data.poisoned[:20].any()
    src = data.source[20:]
    assert len(set(src.tolist())) == 5  # drawn without replacement
    torch.testing.assert_close(data.x[20:], trigger(x[src]))
    assert torch.equal(data.y[20:], y[src]) and torch.equal(data.y_true[20:], y[src])  # labels kept
    again = poison_training_set(x, y, trigger, rate=0.25, relabel=False, target_label=3, seed=1)
    assert torch.equal(again.source, data.source)  # fixed by the seed
    other = poison_training_set(x, y, trigger, rate=0.25, relabel=False, target_label=3, seed=2)
    assert not torch.equal(other.source, data.source)


def test_noppel_duplicate_relabelled(clean):
    x, y = clean
    data = poison_training_set(x, y, build_trigger("rectangle"), rate=1.0, relabel=True, target_label=3)
    assert len(data) == 40 and sorted(data.source[20:].tolist()) == list(range(20))
    assert (data.y[20:] == 3).all() and torch.equal(data.y_true[20:], y[data.source[20:]])
    assert torch.equal(data.source[:20], torch.arange(20))
    assert [t.shape[0] for t in data.tensors()] == [40] * 4


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_bad_rate(clean, rate):
    with pytest.raises(ConfigError, match="poison rate"):
        poison_training_set(*clean, build_trigger("patch"), rate=rate, relabel=False, target_label=0)


def test_apply_trigger_in_chunks(clean):
    x, _ = clean
    trigger = build_trigger("blend", alpha=0.3)
    torch.testing.assert_close(apply_trigger(trigger, x, batch_size=3), trigger(x))


def test_replace_mode_keeps_length_and_marks_chosen(clean):
    x, y = clean
    trigger = build_trigger("patch", size=2)
    data = poison_training_set(x, y, trigger, rate=1.0, relabel=True, target_label=3, mode="replace",
                               indices=torch.tensor([7, 2, 11]))
    assert len(data) == 20 and data.chosen.tolist() == [2, 7, 11]
    assert data.poisoned.sum() == 3 and data.poisoned[[2, 7, 11]].all()
    torch.testing.assert_close(data.x[data.chosen], trigger(x[[2, 7, 11]]))
    untouched = ~data.poisoned
    assert torch.equal(data.x[untouched], x[untouched]) and torch.equal(data.y[untouched], y[untouched])
    assert (data.y[data.chosen] == 3).all() and torch.equal(data.y_true, y)
    assert torch.equal(data.source, torch.arange(20))
    assert torch.equal(x, clean[0])  # the caller's tensors are not modified


def test_replace_mode_at_a_rate_and_append_chosen(clean):
    x, y = clean
    trigger = build_trigger("patch", size=2)
    replaced = poison_training_set(x, y, trigger, rate=0.25, relabel=False, target_label=0, seed=1, mode="replace")
    appended = poison_training_set(x, y, trigger, rate=0.25, relabel=False, target_label=0, seed=1)
    assert torch.equal(replaced.chosen, appended.chosen) and len(replaced.chosen) == 5


@pytest.mark.parametrize("indices, match", [([3, 3], "distinct"), ([0, 20], r"\[0, 19\]"), ([], "non-empty"),
                                            ([0.5], "integer")])
def test_bad_indices(clean, indices, match):
    with pytest.raises(ConfigError, match=match):
        poison_training_set(*clean, build_trigger("patch"), rate=0.1, relabel=True, target_label=0, mode="replace",
                            indices=torch.tensor(indices))


def test_bad_mode(clean):
    with pytest.raises(ConfigError, match="poison mode"):
        poison_training_set(*clean, build_trigger("patch"), rate=0.1, relabel=True, target_label=0, mode="swap")


# ----------------------------------------------------------------------------------------------- streamed
@pytest.mark.parametrize("mode, rate, relabel", [("append", 0.25, False), ("append", 1.0, True),
                                                 ("replace", 0.3, True)])
def test_poisoned_stream_equals_the_in_memory_set(clean, mode, rate, relabel):
    from xaisec.backdoor.poison import PoisonedStream, TriggerBatches
    from xaisec.data import TensorImages, make_loader

    x, y = clean
    trigger = build_trigger("patch", size=2)
    memory = poison_training_set(x, y, trigger, rate, relabel, target_label=3, seed=4, mode=mode)
    stream = PoisonedStream(TensorImages(x, y), trigger, rate, relabel, 3, seed=4, mode=mode)
    assert len(stream) == len(memory) and torch.equal(stream.chosen, memory.chosen)
    items = [torch.stack(column) for column in zip(*(stream[j] for j in range(len(stream))))]
    for got, want in zip(items, memory.tensors()):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    # per batch: the loader's batches with the trigger applied to the poisoned rows give the same data
    per_batch = PoisonedStream(TensorImages(x, y), trigger, rate, relabel, 3, seed=4, mode=mode, per_batch=True)
    for xb, yb, pb, sb in TriggerBatches(make_loader(per_batch, batch_size=7, seed=1), trigger):
        torch.testing.assert_close(xb, memory.x[_rows(memory, sb, pb)], rtol=0, atol=1e-7)
        assert torch.equal(yb, memory.y[_rows(memory, sb, pb)])


def _rows(memory, source, poisoned):
    """Rows of ``memory`` holding ``(source, poisoned)``."""
    return torch.tensor([int(((memory.source == s) & (memory.poisoned == p)).nonzero()[0]) for s, p in zip(source, poisoned)])


def test_poisoned_stream_chosen_indices_and_errors(clean):
    from xaisec.backdoor.poison import PoisonedStream
    from xaisec.data import TensorImages

    x, y = clean
    data = PoisonedStream(TensorImages(x, y), build_trigger("patch"), 1.0, True, 0, mode="replace",
                          indices=torch.tensor([5, 2]))
    assert data.chosen.tolist() == [2, 5] and len(data) == 20 and data[5][2] and not data[4][2]
    with pytest.raises(IndexError):
        data[20]
    with pytest.raises(ConfigError, match="poison mode"):
        PoisonedStream(TensorImages(x, y), build_trigger("patch"), 0.1, True, 0, mode="mix")
    with pytest.raises(ConfigError, match="rate"):
        PoisonedStream(TensorImages(x, y), build_trigger("patch"), 1.5, True, 0)
