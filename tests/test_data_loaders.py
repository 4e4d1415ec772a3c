"""On-disk loaders, each tested on tiny files written here in the exact layout of the real dataset."""
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.preprocessing import MinMaxScaler

from xaisec.data import (DATASETS, TABULAR_SETS, load_chestxray14, load_cifar10, load_cub200, load_dataset,
                         load_gtsrb, load_imagefolder, load_sklearn_tabular, stratified_split,
                         tabular_feature_names)
from xaisec.data.chestxray import DISEASES
from xaisec.data.images import read_image, read_images, select_subset
from xaisec.errors import DataError

from trees import (BIRD, CUB_CLASSES, EDGE, GT_HEADER, SIGN, assert_images, solid, write_chestxray, write_cifar,
                   write_cub, write_folder, write_gtsrb)


# ----------------------------------------------------------------------------------------------- helpers
def test_select_subset_limits_and_is_seeded():
    labels = np.repeat(np.arange(4), 10)
    idx = select_subset(labels, 40, max_per_class=3, seed=0)
    assert np.bincount(labels[idx]).tolist() == [3, 3, 3, 3] and (np.diff(idx) > 0).all()
    assert len(select_subset(labels, 40, max_samples=7, seed=0)) == 7
    assert np.array_equal(select_subset(labels, 40, 7, seed=1), select_subset(labels, 40, 7, seed=1))
    assert not np.array_equal(select_subset(labels, 40, 7, seed=1), select_subset(labels, 40, 7, seed=2))
    assert np.array_equal(select_subset(labels, 40), np.arange(40))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DataError, match="max_samples"):
            select_subset(labels, 40, max_samples=bad)
    with pytest.raises(DataError, match="multi-label"):
        select_subset(None, 40, max_per_class=2)


def test_read_image_converts_modes_and_resizes_bilinear(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png", "RGB", (6, 5))
    ref = np.asarray(Image.fromarray(rgb).resize((5, 6), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    assert out.shape == (3, 6, 5) and np.allclose(out, ref.transpose(2, 0, 1))
    grey = read_image(tmp_path / "a.png", "L", 4)
    assert grey.shape == (1, 4, 4)
    # Palette, RGBA and 16-bit greyscale files all come out as the requested channels.
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    Image.fromarray(np.dstack([rgb, np.full((12, 10), 7, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(np.full((8, 8), 65535 // 2, np.uint16)).save(tmp_path / "wide.png")
    assert read_image(tmp_path / "p.png", "RGB", 4).shape == (3, 4, 4)
    assert np.allclose(read_image(tmp_path / "rgba.png", "RGB", (12, 10)), rgb.transpose(2, 0, 1) / 255)
    assert np.allclose(read_image(tmp_path / "wide.png", "L", 8), 127 / 255, atol=1 / 255)


def test_read_image_errors_name_the_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="bad.jpg"):
        read_images([tmp_path / "bad.jpg"], "RGB", 8)
    buf = tmp_path / "trunc.png"
    solid((40, 40), (10, 200, 30)).save(buf)
    buf.write_bytes(buf.read_bytes()[:60])
    with pytest.raises(DataError, match="trunc.png.*corrupt"):
        read_image(buf, "RGB", 8)
    with pytest.raises(DataError, match="missing.png does not exist"):
        read_image(tmp_path / "missing.png", "RGB", 8)
    with pytest.raises(DataError, match="size"):
        read_image(buf, "RGB", 0)
    with pytest.raises(DataError, match="mode"):
        read_image(buf, "CMYK", 8)


# ----------------------------------------------------------------------------------------------- cifar10
def test_cifar10_fixture_is_a_python2_pickle(tmp_path):
    write_cifar(tmp_path)
    ops = list(pickletools.genops((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes()))
    assert {arg for op, arg, _ in ops if op.name == "GLOBAL"} == {
        "numpy dtype", "numpy ndarray", "numpy.core.multiarray _reconstruct"}
    names = {op.name for op, _, _ in ops}
    assert "SHORT_BINSTRING" in names and "BINSTRING" in names and not names & {"BINUNICODE", "BINBYTES"}


def test_cifar10_also_reads_python3_pickles(tmp_path):
    batches = write_cifar(tmp_path, py2=False)
    ds = load_cifar10(tmp_path)
    assert np.array_equal((ds.x_test[3] * 255).round().to(torch.uint8).numpy().reshape(-1), batches["test_batch"][b"data"][3])


def test_cifar10_reads_planes_labels_and_names(tmp_path):
    batches = write_cifar(tmp_path)
    ds = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py")
    assert_images(ds.x_train, 30, 3, 32, 32)
    assert_images(ds.x_test, 8, 3, 32, 32)
    first = batches["data_batch_1"][b"data"][0]
    # Row layout: 1024 red, then 1024 green, then 1024 blue values, row-major 32x32.
    assert torch.equal(ds.x_train[0, 0, 0, :5], torch.tensor(first[:5] / 255.0, dtype=torch.float32))
    assert ds.x_train[0, 1, 0, 0] == np.float32(first[1024] / 255.0) and ds.x_train[0, 2, 1, 0] == np.float32(first[2048 + 32] / 255.0)
    last = batches["data_batch_5"][b"data"][-1]
    assert np.array_equal((ds.x_train[-1] * 255).round().to(torch.uint8).numpy().reshape(-1), last)
    assert ds.y_train.dtype == torch.int64 and ds.y_train[:6].tolist() == list(range(6))
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck" and ds.num_classes == 10


def test_cifar10_resize_subset_and_parent_folder(tmp_path):
    batches = write_cifar(tmp_path)
    ds = load_cifar10(tmp_path, size=16, max_per_class=1)  # the parent folder is accepted too
    assert_images(ds.x_train, 10, 3, 16, 16)
    assert sorted(ds.y_train.tolist()) == list(range(10)) and len(ds.y_test) == 8
    small = load_cifar10(tmp_path, max_samples=4, seed=3)
    assert len(small.y_train) == 4 and len(small.y_test) == 4
    # The resize is PIL bilinear of the HWC image.
    full = load_cifar10(tmp_path, size=16)
    img = batches["data_batch_1"][b"data"][2].reshape(3, 32, 32).transpose(1, 2, 0)
    ref = np.asarray(Image.fromarray(img).resize((16, 16), Image.Resampling.BILINEAR), np.float32) / 255
    assert np.allclose(full.x_train[2].numpy(), ref.transpose(2, 0, 1))


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_cifar10_rejects_pickles_that_import_code(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="data_batch_3.*not allowed"):
        load_cifar10(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("payload, message", [
    ([1, 2, 3], "expected a dict with keys b'data' and b'labels'"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, "b'labels'"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, "expected a dict"),  # str keys: not the format
    ({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]}, "CIFAR-100"),
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"\(N, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, "outside the 10 classes"),
])
def test_cifar10_rejects_wrong_contents(tmp_path, payload, message):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match=message):
        load_cifar10(tmp_path)


def test_cifar10_missing_or_garbage_files(tmp_path):
    with pytest.raises(DataError, match=r"(?s)nowhere.*does not exist.*data_batch_1"):
        load_cifar10(tmp_path / "nowhere")
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"data_batch_4 does not exist"):
        load_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="cannot unpickle .*data_batch_4"):
        load_cifar10(tmp_path)


# ----------------------------------------------------------------------------------------------- gtsrb
def test_gtsrb_official_layout(tmp_path):
    write_gtsrb(tmp_path)
    ds = load_gtsrb(tmp_path, size=16)  # the parent of GTSRB/ is accepted
    assert_images(ds.x_train, 9, 3, 16, 16)
    assert_images(ds.x_test, 4, 3, 16, 16)
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and ds.y_test.tolist() == [0, 1, 2, 0]
    assert ds.num_classes == 43 and len(ds.class_names) == 43 and ds.class_names[14] == "Stop"
    assert ds.x_train[:, :, 0, 0].abs().max() == 0  # the margin around the sign is kept


def test_gtsrb_crop_roi_is_inclusive(tmp_path):
    root = write_gtsrb(tmp_path, per_class=1)
    ds = load_gtsrb(root, size=(14, 14), crop_roi=True)  # ROI of a 20x22 image: 14 wide, 14 high, no resize
    sign, edge = torch.tensor(SIGN) / 255.0, torch.tensor(EDGE) / 255.0
    assert torch.allclose(ds.x_train[:, :, :, :-1], sign[None, :, None, None].expand(3, 3, 14, 13))
    assert torch.allclose(ds.x_train[:, :, :, -1], edge[None, :, None].expand(3, 3, 14))


def test_gtsrb_subsets(tmp_path):
    write_gtsrb(tmp_path, per_class=5)
    ds = load_gtsrb(tmp_path / "GTSRB", size=8, max_per_class=2)
    assert torch.bincount(ds.y_train).tolist() == [2, 2, 2] and len(ds.y_test) == 4
    assert len(load_gtsrb(tmp_path, size=8, max_samples=5).y_train) == 5


def test_gtsrb_errors(tmp_path):
    with pytest.raises(DataError, match=r"(?s)Final_Training.*does not exist.*GT-00000.csv"):
        load_gtsrb(tmp_path)
    root = write_gtsrb(tmp_path)
    (root / "GT-final_test.csv").rename(root / "Final_Test" / "Images" / "GT-final_test.test.csv")
    with pytest.raises(DataError, match="GT-final_test.csv not found.*GTSRB_Final_Test_GT.zip"):
        load_gtsrb(root)
    # Labels are also accepted inside Final_Test/Images/.
    (root / "Final_Test" / "Images" / "GT-final_test.test.csv").rename(root / "Final_Test" / "Images" / "GT-final_test.csv")
    assert len(load_gtsrb(root, size=8).y_test) == 4
    (root / "Final_Training" / "Images" / "00001" / "GT-00001.csv").unlink()
    with pytest.raises(DataError, match="GT-00001.csv does not exist"):
        load_gtsrb(root)


def test_gtsrb_bad_rows_and_corrupt_image(tmp_path):
    root = write_gtsrb(tmp_path)
    gt = root / "Final_Training" / "Images" / "00002" / "GT-00002.csv"
    gt.write_text("Filename;Width;Height\n00000_00000.ppm;20;22\n")
    with pytest.raises(DataError, match=r"GT-00002.csv lacks the column\(s\) \['ClassId'"):
        load_gtsrb(root)
    gt.write_text(";".join(GT_HEADER) + "\n00000_00000.ppm;20;22;3;4;16;17;50\n")
    with pytest.raises(DataError, match="ClassId 50"):
        load_gtsrb(root)
    gt.write_text(";".join(GT_HEADER) + "\n00000_00000.ppm;20;22;3;4;16;17;2\n")
    (root / "Final_Training" / "Images" / "00002" / "00000_00000.ppm").write_bytes(b"P6\n20 22\n255\n\x00\x01")
    with pytest.raises(DataError, match=r"00002/00000_00000.ppm"):
        load_gtsrb(root)


# ----------------------------------------------------------------------------------------------- cub200
def test_cub200_split_labels_and_channels(tmp_path):
    write_cub(tmp_path)
    ds = load_dataset("cub200", root=tmp_path, size=24)
    assert_images(ds.x_train, 3, 3, 24, 24)
    assert_images(ds.x_test, 3, 3, 24, 24)
    assert ds.y_train.tolist() == [0, 1, 2] and ds.y_test.tolist() == [0, 1, 2]
    assert ds.num_classes == 3 and ds.class_names == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    assert ds.masks_train is None


def test_cub200_bbox_crop_and_masks(tmp_path):
    cub = write_cub(tmp_path)
    ds = load_cub200(cub, size=20, crop_bbox=True, masks=True)
    bird = torch.tensor(BIRD, dtype=torch.float32)[:, None, None] / 255
    colour = ds.x_train[[0, 2]]  # image 2 (a test image) is the greyscale one
    assert (colour - bird).abs().max() < 4 / 255
    grey = ds.x_test[0]
    assert (grey[0] - grey[1]).abs().max() < 1e-6 and (grey - grey.mean()).abs().max() < 4 / 255
    assert ds.masks_train.dtype == torch.bool and ds.masks_train.all()  # the crop is all bird
    uncropped = load_cub200(cub, size=(30, 40), masks=True)
    m = uncropped.masks_test[0, 0]
    assert m.sum() == 400 and m[5:25, 10:30].all()


def test_cub200_subsets_and_errors(tmp_path):
    cub = write_cub(tmp_path, per_class=4, segmentations=False)
    ds = load_cub200(cub, size=8, max_per_class=1)
    assert ds.y_train.tolist() == [0, 1, 2] and ds.y_test.tolist() == [0, 1, 2]
    assert len(load_cub200(cub, size=8, max_samples=2).y_test) == 2
    with pytest.raises(DataError, match="segmentations"):
        load_cub200(cub, size=8, masks=True)
    (cub / "bounding_boxes.txt").unlink()
    with pytest.raises(DataError, match=r"(?s)bounding_boxes.txt does not exist.*Expected layout"):
        load_cub200(cub, size=8, crop_bbox=True)
    (cub / "train_test_split.txt").write_text("1 1\n2 maybe\n")
    with pytest.raises(DataError, match="split flag 'maybe'"):
        load_cub200(cub, size=8)
    (cub / "images.txt").unlink()
    with pytest.raises(DataError, match="images.txt does not exist"):
        load_cub200(cub, size=8)
    with pytest.raises(DataError, match="does not exist"):
        load_cub200(tmp_path / "missing")


def test_cub200_corrupt_jpeg_named(tmp_path):
    cub = write_cub(tmp_path)
    victim = sorted((cub / "images" / CUB_CLASSES[1]).iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(DataError, match=victim.name):
        load_cub200(cub, size=8)


# ----------------------------------------------------------------------------------------------- chestxray14
def test_chestxray14_multilabel(tmp_path):
    write_chestxray(tmp_path)
    ds = load_dataset("chestxray14", root=tmp_path, size=12)
    assert ds.multilabel and ds.num_classes == 14 and ds.class_names == DISEASES
    assert_images(ds.x_train, 5, 1, 12, 12)
    assert_images(ds.x_test, 3, 1, 12, 12)
    assert ds.y_train.shape == (5, 14) and ds.y_train.dtype == torch.float32
    col = {d: i for i, d in enumerate(DISEASES)}
    expected = torch.zeros(5, 14)
    for row, names in enumerate(["Cardiomegaly", "Cardiomegaly|Emphysema", "", "Hernia", "Effusion|Infiltration|Mass"]):
        for n in filter(None, names.split("|")):
            expected[row, col[n]] = 1
    assert torch.equal(ds.y_train, expected)
    assert ds.y_test.sum(1).tolist() == [0, 1, 2]
    assert torch.allclose(ds.x_train[:, 0, 0, 0], torch.tensor([10, 40, 70, 100, 130]) / 255.0)


def test_chestxray14_single_label_filter(tmp_path):
    write_chestxray(tmp_path)
    ds = load_chestxray14(tmp_path, size=8, single_label=True)
    assert not ds.multilabel and ds.num_classes == 15 and ds.class_names[14] == "No Finding"
    # Only images with exactly one entry in Finding Labels ("No Finding" counts as one, class 14).
    assert ds.y_train.tolist() == [DISEASES.index("Cardiomegaly"), 14, DISEASES.index("Hernia")]
    assert ds.y_test.tolist() == [14, DISEASES.index("Pneumonia")] and ds.y_train.dtype == torch.int64
    assert_images(ds.x_train, 3, 1, 8, 8)
    sub = load_chestxray14(tmp_path, size=8, single_label=True, max_per_class=1)
    assert sorted(sub.y_train.tolist()) == [1, 13, 14]
    with pytest.raises(DataError, match="multi-label"):
        load_chestxray14(tmp_path, size=8, max_per_class=1)
    assert len(load_chestxray14(tmp_path, size=8, max_samples=2).y_train) == 2


def test_chestxray14_missing_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_chestxray14(tmp_path / "nope")
    root = write_chestxray(tmp_path)
    (root / "images_001" / "images" / "00000001_000.png").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) of train_val_list.txt .*00000001_000.png.*skip_missing"):
        load_chestxray14(root, size=8)
    assert len(load_chestxray14(root, size=8, skip_missing=True).y_train) == 4
    (root / "test_list.txt").unlink()
    with pytest.raises(DataError, match=r"(?s)test_list.txt does not exist.*Data_Entry_2017.csv"):
        load_chestxray14(root, size=8, skip_missing=True)


def test_chestxray14_bad_csv_and_corrupt_png(tmp_path):
    root = write_chestxray(tmp_path)
    entries = (root / "Data_Entry_2017.csv").read_text()
    (root / "Data_Entry_2017.csv").write_text(entries.replace("Hernia", "Hernia|Broken_Bone"))
    with pytest.raises(DataError, match="line 5: invalid Finding Labels 'Hernia|Broken_Bone'"):
        load_chestxray14(root, size=8)
    (root / "Data_Entry_2017.csv").write_text("Image,Labels\nx.png,Mass\n")
    with pytest.raises(DataError, match="lacks the columns"):
        load_chestxray14(root, size=8)
    (root / "Data_Entry_2017.csv").write_text(entries)
    (root / "images" / "00000005_000.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match="00000005_000.png"):
        load_chestxray14(root, size=8)


# ----------------------------------------------------------------------------------------------- imagefolder
def test_imagefolder_train_val(tmp_path):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "val", per_class=2)
    ds = load_dataset("imagefolder", root=tmp_path, size=(8, 6))
    assert_images(ds.x_train, 6, 3, 8, 6)
    assert_images(ds.x_test, 4, 3, 8, 6)
    assert ds.class_names == ["cat", "dog"] and ds.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.y_test.tolist() == [0, 0, 1, 1]
    assert torch.allclose(ds.x_train[0, :, 0, 0], torch.tensor([0, 100, 50]) / 255.0)
    grey = load_imagefolder(tmp_path, size=8, channels=1)
    assert_images(grey.x_train, 6, 1, 8, 8)


def test_imagefolder_test_folder_and_stratified_fallback(tmp_path):
    write_folder(tmp_path / "a" / "train")
    write_folder(tmp_path / "a" / "test", per_class=1)
    assert len(load_imagefolder(tmp_path / "a", size=4).y_test) == 2
    write_folder(tmp_path / "b", classes=("x", "y", "z"), per_class=5)
    ds = load_imagefolder(tmp_path / "b", size=4, test_fraction=0.2, seed=1)
    assert torch.bincount(ds.y_train).tolist() == [4, 4, 4] and torch.bincount(ds.y_test).tolist() == [1, 1, 1]
    sub = load_imagefolder(tmp_path / "b", size=4, max_per_class=2)
    assert torch.bincount(sub.y_train).tolist() == [2, 2, 2]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match=r"(?s)does not exist.*train/<class name>"):
        load_imagefolder(tmp_path / "none")
    write_folder(tmp_path / "train")
    with pytest.raises(DataError, match="no val/ or test/"):
        load_imagefolder(tmp_path)
    write_folder(tmp_path / "val", classes=("cat", "cow"))
    with pytest.raises(DataError, match=r"class folders \['cow'\]"):
        load_imagefolder(tmp_path)
    with pytest.raises(DataError, match="holdout"):
        load_imagefolder(tmp_path, test_split="holdout")
    with pytest.raises(DataError, match="channels"):
        load_imagefolder(tmp_path, channels=4)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no samples"):
        load_imagefolder(tmp_path / "empty")
    (tmp_path / "c" / "k").mkdir(parents=True)
    (tmp_path / "c" / "k" / "0.png").write_bytes(b"garbage")
    (tmp_path / "c" / "k" / "1.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read image .*k/\d.png"):
        load_imagefolder(tmp_path / "c", size=4, test_fraction=0.5)


# ----------------------------------------------------------------------------------------------- sklearn_tabular
@pytest.mark.parametrize("table", sorted(TABULAR_SETS))
def test_sklearn_tabular_scaled_on_train_only(table):
    ds = load_dataset("sklearn_tabular", table=table)
    bunch = TABULAR_SETS[table]()
    train, test = stratified_split(bunch.target, 0.2, 0)
    assert ds.x_train.dim() == 2 and ds.x_train.shape == (len(train), bunch.data.shape[1])
    assert ds.y_train.dtype == torch.int64 and torch.equal(ds.y_test, torch.as_tensor(bunch.target[test]))
    scaler = MinMaxScaler().fit(bunch.data[train])  # the trusted peer, fit on train only
    assert np.allclose(ds.x_train.numpy(), scaler.transform(bunch.data[train]), atol=1e-6)
    assert np.allclose(ds.x_test.numpy(), np.clip(scaler.transform(bunch.data[test]), 0, 1), atol=1e-6)
    assert ds.x_test.min() >= 0 and ds.x_test.max() <= 1
    assert ds.num_classes == len(bunch.target_names) and len(tabular_feature_names(table)) == ds.x_train.shape[1]


def test_sklearn_tabular_subset_and_errors():
    ds = load_sklearn_tabular("digits", max_per_class=3)
    assert torch.bincount(ds.y_train).tolist() == [3] * 10 and torch.bincount(ds.y_test).tolist() == [3] * 10
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1
    with pytest.raises(DataError, match="Did you mean 'iris'"):
        load_sklearn_tabular("irsi")


def test_all_disk_loaders_registered():
    assert {"cifar10", "gtsrb", "cub200", "chestxray14", "imagefolder", "sklearn_tabular"} <= set(DATASETS.names())
    for bad in ((3, -1), 32.0, "32", (8, 8, 8), True):
        with pytest.raises(DataError, match="size must be"):
            load_imagefolder(".", size=bad)
