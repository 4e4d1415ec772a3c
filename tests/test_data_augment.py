"""Batched training augmentation: crops are windows of the padded image, flips mirror, draws are seeded."""
import pytest
import torch
import torch.nn.functional as F

from xaisec.data.augment import Augment, AugmentedBatches, paper_augment
from xaisec.errors import ConfigError
from xaisec.train import TensorBatches


def test_pad_crop_takes_a_window_of_the_zero_padded_image():
    x = torch.rand(6, 2, 5, 5)
    out = Augment(crop="pad", padding=2, flip=True)(x, torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2))
    for img, src in zip(out, padded):
        windows = [w for t in range(5) for l in range(5) for w in (src[:, t:t + 5, l:l + 5],
                                                                   src[:, t:t + 5, l:l + 5].flip(-1))]
        assert any(torch.equal(img, w) for w in windows)
    assert torch.equal(Augment(padding=0, flip=False)(x, torch.Generator()), x)


def test_resized_crop_of_the_whole_image_is_the_identity_or_its_mirror():
    x = torch.rand(8, 3, 12, 12)
    same = Augment(crop="resized", scale=(1, 1), ratio=(1, 1), flip=False)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(same, x, atol=1e-6)
    flipped = Augment(crop="resized", scale=(1, 1), ratio=(1, 1))(x, torch.Generator().manual_seed(1))
    assert all(torch.allclose(a, b, atol=1e-6) or torch.allclose(a, b.flip(-1), atol=1e-6) for a, b in zip(flipped, x))
    small = Augment(crop="resized", scale=(0.1, 0.2))(x, torch.Generator().manual_seed(2))
    assert small.shape == x.shape and 0 <= small.min() and small.max() <= 1 and not torch.allclose(small, x)


def test_paper_choice_by_size():
    assert paper_augment((3, 32, 32)).crop == "pad" and paper_augment((1, 224, 224)).crop == "resized"


def test_augmented_batches_are_seeded_per_epoch_and_leave_labels():
    x, y = torch.rand(10, 1, 8, 8), torch.arange(10)
    batches = AugmentedBatches(TensorBatches(x, y, batch_size=4, seed=0), Augment(), seed=5)

    def epoch(e):
        batches.set_epoch(e)
        return list(batches)

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b)) and len(a) == len(batches) == 3
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))
    plain = TensorBatches(x, y, batch_size=4, seed=0)
    plain.set_epoch(1)
    assert all(torch.equal(p[1], q[1]) for p, q in zip(a, plain))


@pytest.mark.parametrize("bad", [{"crop": "random"}, {"padding": -1}, {"scale": (0.5, 2.0)}, {"ratio": (0, 1)}])
def test_bad_options_raise(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        Augment(**bad)
