"""Streamed datasets and their loader: the same pixels as the in-memory loaders, a seeded order that resumes,
workers that change nothing, and errors that name the file."""
import numpy as np
import pytest
import torch
from PIL import Image
from trees import write_chestxray, write_cifar, write_cub, write_folder, write_gtsrb

from xaisec.data import (DatasetIndex, ImageFiles, ImageStream, TensorImages, load_dataset, make_loader,
                         open_dataset)
from xaisec.data.loader import worker_message
from xaisec.errors import DataError
from xaisec.train import TensorBatches

FORMATS = {
    "cifar10": (lambda root: write_cifar(root), {"size": 16}),
    "gtsrb": (lambda root: write_gtsrb(root), {"size": 12, "crop_roi": True}),
    "cub200": (lambda root: write_cub(root), {"size": 10, "crop_bbox": True}),
    "chestxray14": (lambda root: write_chestxray(root), {"size": 8}),
    "imagefolder": (lambda root: (write_folder(root / "train"), write_folder(root / "val", per_class=2)), {"size": 8}),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_streamed_items_equal_the_in_memory_loader(tmp_path, name):
    write, options = FORMATS[name]
    write(tmp_path)
    memory = load_dataset(name, root=tmp_path, **options)
    stream = open_dataset(name, root=tmp_path, **options)
    assert isinstance(stream.train, ImageStream) and stream.input_shape == memory.input_shape
    assert (stream.num_classes, stream.class_names, stream.multilabel) == \
        (memory.num_classes, memory.class_names, memory.multilabel)
    for split in ("train", "test"):
        data = getattr(stream, split)
        x = torch.stack([data[i][0] for i in range(len(data))])
        y = torch.stack([data[i][1] for i in range(len(data))])
        assert torch.equal(x, getattr(memory, f"x_{split}")) and torch.equal(y, getattr(memory, f"y_{split}"))


def test_embedded_datasets_stay_in_memory_behind_the_same_interface():
    stream = open_dataset("shapes", n=40)
    memory = load_dataset("shapes", n=40)
    assert isinstance(stream.train, TensorImages) and len(stream.train) == len(memory.x_train)
    x, y = next(iter(make_loader(stream.train, batch_size=5, shuffle=False)))
    assert torch.equal(x, memory.x_train[:5]) and torch.equal(y, memory.y_train[:5])
    with pytest.raises(Exception, match="shape"):
        open_dataset("shaeps")


def _epoch(batches, epoch):
    batches.set_epoch(epoch)
    return [tuple(t.clone() for t in b) for b in batches]


def test_order_is_seeded_per_epoch_resumes_and_matches_tensor_batches(tmp_path):
    write_folder(tmp_path, classes=("a", "b", "c"), per_class=5)
    data = open_dataset("imagefolder", root=tmp_path, size=6, test_fraction=0.2).train
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = data.labels
    run = make_loader(data, batch_size=4, seed=3)
    first, second = _epoch(run, 0), _epoch(run, 1)
    resumed = make_loader(data, batch_size=4, seed=3, epoch=1)  # a run resumed at epoch 1
    assert all(torch.equal(a[0], b[0]) for a, b in zip(second, [tuple(b) for b in resumed]))
    assert not torch.equal(first[0][1], second[0][1]) or not torch.equal(first[0][0], second[0][0])
    memory = TensorBatches(x, y, batch_size=4, seed=3)
    for streamed, held in zip(second, _epoch(memory, 1)):
        assert torch.equal(streamed[0], held[0]) and torch.equal(streamed[1], held[1])
    assert len(run) == len(memory) == 3


def test_two_workers_give_the_batches_of_zero_workers(tmp_path):
    write_cub(tmp_path, per_class=4, segmentations=False)
    data = open_dataset("cub200", root=tmp_path, size=8).train
    serial, parallel = make_loader(data, batch_size=3, seed=1), make_loader(data, batch_size=3, seed=1, workers=2)
    for epoch in (0, 1):  # workers persist across epochs and follow set_epoch
        for a, b in zip(_epoch(serial, epoch), _epoch(parallel, epoch), strict=True):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_unreadable_image_names_its_file_even_from_a_worker(tmp_path):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "val", per_class=1)
    (tmp_path / "train" / "dog" / "2.JPEG").write_bytes(b"\xff\xd8 truncated")
    data = open_dataset("imagefolder", root=tmp_path, size=6)  # indexing does not decode: no error yet
    for workers in (0, 2):
        with pytest.raises(DataError) as info:
            list(make_loader(data.train, batch_size=2, workers=workers))
        message = str(info.value)
        assert "dog/2.JPEG" in message and "cannot read image" in message
        assert "Traceback" not in message and "worker process" not in message


def test_cheap_checks_fail_before_training(tmp_path):
    root = write_chestxray(tmp_path)
    (root / "test_list.txt").unlink()
    with pytest.raises(DataError, match="test_list.txt does not exist"):
        open_dataset("chestxray14", root=root)
    (root / "test_list.txt").write_bytes(b"00000006_000.png\x00\x00\x01")
    with pytest.raises(DataError, match="binary file"):
        open_dataset("chestxray14", root=root)
    files = ImageFiles([root / "images" / "00000002_000.png"], np.array([7]), "L", 4)
    with pytest.raises(DataError, match=r"train labels are in \[7, 7\], outside the 3 classes"):
        DatasetIndex("toy", files, files, num_classes=3)


class _WrongSize(ImageFiles):
    def decode(self, i):
        return np.zeros((1, 5, 5), np.float32)


def test_an_image_of_another_size_than_configured_is_named(tmp_path):
    Image.new("L", (5, 5)).save(tmp_path / "a.png")
    stream = ImageStream(_WrongSize([tmp_path / "a.png"], np.array([0]), "L", 4), "toy")
    with pytest.raises(DataError, match=r"a.png decoded to shape \(1, 5, 5\).*configured for \(1, 4, 4\)"):
        stream[0]


def test_worker_message_keeps_plain_messages():
    assert worker_message(DataError("plain")) == "plain"
    wrapped = DataError("Caught DataError in DataLoader worker process 1.\nOriginal Traceback (most recent call "
                        "last):\n  File ...\nxaisec.errors.DataError: cannot read image /x/y.png: broken\n")
    assert worker_message(wrapped) == "cannot read image /x/y.png: broken"


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"workers": -1}, {"batch_size": 2.5}])
def test_make_loader_rejects_bad_arguments(bad):
    with pytest.raises(DataError, match=next(iter(bad))):
        make_loader(TensorImages(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)), **bad)


# ----------------------------------------------------------------------------------------------- decoded cache
def test_decoded_cache_is_lossless_hits_and_misses_on_changed_files(tmp_path, monkeypatch):
    from xaisec.data import cache as cache_module
    from xaisec.data.cache import CachedImages, cache_path

    write_gtsrb(tmp_path / "data")
    options = {"root": tmp_path / "data", "size": 12, "crop_roi": True}
    plain = open_dataset("gtsrb", **options)
    first = open_dataset("gtsrb", cache_dir=tmp_path / "cache", cache_workers=2, **options)
    assert isinstance(first.train, CachedImages) and len(list((tmp_path / "cache").iterdir())) == 2
    for a, b in ((plain.train, first.train), (plain.test, first.test)):
        assert all(torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1]) for i in range(len(a)))
    loader = make_loader(first.train, batch_size=4, workers=2)
    assert torch.equal(torch.cat([b[1] for b in loader]).sort().values, plain.train.labels.sort().values)

    decoded = []
    monkeypatch.setattr(ImageFiles, "decode", lambda self, i: decoded.append(i) or np.zeros(self.shape, np.float32))
    again = open_dataset("gtsrb", cache_dir=tmp_path / "cache", **options)  # a hit: nothing decoded
    assert decoded == [] and torch.equal(again.train[3][0], first.train[3][0])
    monkeypatch.undo()

    image = plain.train.split.paths[0]
    Image.new("RGB", (20, 22), (9, 9, 9)).save(image, format="PPM")  # a changed source file: a miss
    assert cache_path(plain.train, tmp_path / "cache") != first.train.path
    changed = open_dataset("gtsrb", cache_dir=tmp_path / "cache", **options)
    assert changed.train.path != first.train.path and not torch.equal(changed.train[0][0], first.train[0][0])
    assert cache_path(open_dataset("gtsrb", **{**options, "size": 10}).train, tmp_path) != first.train.path
    assert cache_module.cache_key(plain.test) == cache_module.cache_key(open_dataset("gtsrb", **options).test)


def test_cache_build_failure_leaves_no_file_and_names_the_image(tmp_path):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "val", per_class=1)
    (tmp_path / "train" / "cat" / "0.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cat/0.png"):
        open_dataset("imagefolder", root=tmp_path, size=4, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_fit_and_predict_on_a_streamed_split(tmp_path):
    from xaisec.train import cross_entropy, fit, predict, predict_batches

    write_folder(tmp_path / "train", per_class=4)
    write_folder(tmp_path / "val", per_class=2)
    data = open_dataset("imagefolder", root=tmp_path, size=6)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 36, 2))
    history = fit(model, make_loader(data.train, batch_size=4, workers=2), cross_entropy,
                  torch.optim.SGD(model.parameters(), lr=0.1), 2, progress=False)
    assert len(history) == 2
    logits, labels = predict_batches(model, make_loader(data.test, batch_size=3, shuffle=False))
    memory = load_dataset("imagefolder", root=tmp_path, size=6)
    assert torch.equal(labels, memory.y_test) and torch.allclose(logits, predict(model, memory.x_test), atol=1e-6)
