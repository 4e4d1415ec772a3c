"""Tiny dataset trees in the exact on-disk layout of the real datasets (CIFAR-10's Python 2 pickles, GTSRB's
PPM + semicolon CSVs, CUB-200-2011's index files, ChestX-ray14's CSV and split lists, class folders), shared by the
loader, streaming and end-to-end tests."""
import csv
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

def solid(size_wh, color, mode="RGB"):
    return Image.new(mode, size_wh, color)


def assert_images(x, n, c, h, w):
    assert x.shape == (n, c, h, w) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 ``str`` (BINSTRING opcodes), as cPickle did for the official batches."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_binstring(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_binstring
    dispatch[bytes] = _save_binstring


def dumps_py2(obj) -> bytes:
    """A protocol-2 pickle as Python 2 + numpy 1.x wrote it: str keys load as bytes, ``numpy.core`` globals."""
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def write_cifar(root: Path, per_batch: int = 6, n_test: int = 8, seed: int = 0, py2: bool = True) -> dict:
    """``cifar-10-batches-py`` with tiny batches in the official (Python 2 pickle) format."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    dumps = dumps_py2 if py2 else (lambda obj: pickle.dumps({k.encode(): v for k, v in obj.items()}, protocol=4))
    batches, offset = {}, 0
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = ((np.arange(n) + offset) % 10).tolist()
        offset += n
        batch = {"batch_label": f"batch {name}", "labels": labels, "data": data,
                 "filenames": [f"img{i}.png" for i in range(n)]}
        (folder / name).write_bytes(dumps(batch))
        batches[name] = {k.encode(): v for k, v in batch.items()}
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(dumps(meta))
    return batches


GT_HEADER = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
SIGN = (200, 30, 40)
EDGE = (20, 60, 220)  # colour of the last ROI column (inclusive corner)


def write_sign(path: Path, w: int, h: int, roi: tuple[int, int, int, int]) -> None:
    """A dark image whose ROI (inclusive corners) is the sign colour, its last column EDGE."""
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = roi
    img[y1:y2 + 1, x1:x2 + 1] = SIGN
    img[y1:y2 + 1, x2] = EDGE
    Image.fromarray(img).save(path, format="PPM")


def write_gtsrb(root: Path, classes=(0, 1, 2), per_class: int = 3, n_test: int = 4) -> Path:
    root = root / "GTSRB"
    for c in classes:
        folder = root / "Final_Training" / "Images" / f"{c:05d}"
        folder.mkdir(parents=True)
        rows = []
        for i in range(per_class):
            w, h = 20 + i, 22
            name = f"00000_{i:05d}.ppm"
            write_sign(folder / name, w, h, (3, 4, w - 4, h - 5))
            rows.append([name, w, h, 3, 4, w - 4, h - 5, c])
        with open(folder / f"GT-{c:05d}.csv", "w", newline="") as f:
            csv.writer(f, delimiter=";").writerows([GT_HEADER] + rows)
    test = root / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows = []
    for i in range(n_test):
        name = f"{i:05d}.ppm"
        write_sign(test / name, 25, 25, (2, 2, 21, 21))
        rows.append([name, 25, 25, 2, 2, 21, 21, classes[i % len(classes)]])
    with open(root / "GT-final_test.csv", "w", newline="") as f:
        csv.writer(f, delimiter=";").writerows([GT_HEADER] + rows)
    return root


CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
BIRD = (30, 160, 90)


def write_cub(root: Path, per_class: int = 2, segmentations: bool = True) -> Path:
    """``CUB_200_2011`` with ``per_class`` images per class; every other image is a test image."""
    cub = root / "CUB_200_2011"
    lines = {k: [] for k in ("images", "labels", "split", "boxes")}
    image_id = 0
    for c, class_dir in enumerate(CUB_CLASSES, start=1):
        (cub / "images" / class_dir).mkdir(parents=True)
        (root / "segmentations" / class_dir).mkdir(parents=True)
        for i in range(per_class):
            image_id += 1
            rel = f"{class_dir}/{class_dir[4:]}_{image_id:04d}_{i}.jpg"
            img = np.zeros((30, 40, 3), np.uint8)
            img[5:25, 10:30] = BIRD  # the bird box: x=10, y=5, width=20, height=20
            mode = "L" if image_id == 2 else "RGB"  # CUB holds a few greyscale JPEGs
            Image.fromarray(img).convert(mode).save(cub / "images" / rel, quality=100, subsampling=0)
            seg = np.zeros((30, 40), np.uint8)
            seg[5:25, 10:30] = 255
            Image.fromarray(seg).save(root / "segmentations" / Path(rel).with_suffix(".png"))
            lines["images"].append(f"{image_id} {rel}")
            lines["labels"].append(f"{image_id} {c}")
            lines["split"].append(f"{image_id} {int(i % 2 == 0)}")
            lines["boxes"].append(f"{image_id} 10.0 5.0 20.0 20.0")
    (cub / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(CUB_CLASSES, start=1)))
    for key, name in [("images", "images.txt"), ("labels", "image_class_labels.txt"),
                      ("split", "train_test_split.txt"), ("boxes", "bounding_boxes.txt")]:
        (cub / name).write_text("\n".join(lines[key]) + "\n")
    if not segmentations:
        import shutil
        shutil.rmtree(root / "segmentations")
    return cub


XRAY_FINDINGS = {  # file name -> (Finding Labels, split)
    "00000001_000.png": ("Cardiomegaly", "train"),
    "00000001_001.png": ("Cardiomegaly|Emphysema", "train"),
    "00000002_000.png": ("No Finding", "train"),
    "00000003_000.png": ("Hernia", "train"),
    "00000004_000.png": ("Effusion|Infiltration|Mass", "train"),
    "00000005_000.png": ("No Finding", "test"),
    "00000006_000.png": ("Pneumonia", "test"),
    "00000007_000.png": ("Atelectasis|Effusion", "test"),
}


def write_chestxray(root: Path) -> Path:
    """ChestX-ray14 with images spread over ``images/`` and ``images_001/images/`` and the real CSV header."""
    (root / "images").mkdir(parents=True)
    (root / "images_001" / "images").mkdir(parents=True)
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", ""]
    rows = []
    for i, (name, (labels, _)) in enumerate(XRAY_FINDINGS.items()):
        folder = root / ("images" if i % 2 else "images_001/images")
        img = Image.new("L", (20, 20), 10 + 30 * i)
        if i == 3:
            img = img.convert("RGBA")  # a few NIH PNGs are RGBA
        img.save(folder / name)
        rows.append([name, labels, 0, int(name[:8]), 58, "M", "PA", 2682, 2749, 0.143, 0.143, ""])
    with open(root / "Data_Entry_2017.csv", "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    for split, list_name in (("train", "train_val_list.txt"), ("test", "test_list.txt")):
        names = [n for n, (_, s) in XRAY_FINDINGS.items() if s == split]
        (root / list_name).write_text("\n".join(names) + "\n")
    return root


def write_folder(root: Path, classes=("cat", "dog"), per_class: int = 3) -> None:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            ext = ("png", "jpg", "JPEG")[i % 3]
            img = solid((10 + i, 12), (200 * c, 100, 50))
            if i == 1:
                img = img.convert("L")  # mixed channel counts in one folder
            img.save(root / name / f"{i}.{ext}", format="PNG" if ext == "png" else "JPEG")
    (root / classes[0] / "notes.txt").write_text("not an image: skipped by extension")


def _finding_textures(p: int) -> list[np.ndarray]:
    """Bool ``(p,p)`` patterns, one per drawn finding: filled square, horizontal stripes, vertical stripes, frame,
    checkerboard, cross."""
    i, j = np.mgrid[:p, :p]
    mid = slice(p // 2 - 1, p // 2 + 1)
    cross = np.zeros((p, p), bool)
    cross[mid, :] = cross[:, mid] = True
    frame = (i == 0) | (j == 0) | (i == p - 1) | (j == p - 1)
    return [np.ones((p, p), bool), i % 2 == 0, j % 2 == 0, frame, (i + j) % 2 == 0, cross]


def write_chestxray_learnable(root: Path, n_train: int = 48, n_test: int = 32, size: int = 32, findings: int = 4,
                              seed: int = 0) -> Path:
    """ChestX-ray14 in the exact layout of :func:`write_chestxray` whose findings a tiny CNN can learn: each of the
    first ``findings`` (at most 6) diseases is present in an image with probability 0.4 and drawn as its own
    bright texture (square, stripes, frame, ...) in a random cell of a 4x4 grid on a dark noisy ``size`` px image;
    the other diseases never occur. Every drawn finding has positive and negative images in both splits (images
    0 and 1 of each split carry all and none of them)."""
    if not 1 <= findings <= 6 or size % 4:
        raise ValueError("findings must be in [1, 6] and size a multiple of 4")
    from xaisec.data.chestxray import DISEASES

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "images_001" / "images").mkdir(parents=True)
    p = size // 4
    textures = _finding_textures(p)
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", ""]
    rows, lists = [], {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.random((n, findings)) < 0.4
        labels[0], labels[1] = True, False
        for i in range(n):
            name = f"{len(rows) + 1:08d}_000.png"
            img = rng.integers(20, 60, (size, size)).astype(np.uint8)
            cells = rng.permutation(16)
            for k in np.flatnonzero(labels[i]):
                r, c = divmod(int(cells[k]), 4)
                patch = img[r * p:(r + 1) * p, c * p:(c + 1) * p]
                patch[textures[k]] = 230
            folder = root / ("images" if len(rows) % 2 else "images_001/images")
            Image.fromarray(img, "L").save(folder / name)
            present = [DISEASES[k] for k in np.flatnonzero(labels[i])]
            rows.append([name, "|".join(present) or "No Finding", 0, len(rows) + 1, 58, "F", "PA", 2500, 2048,
                         0.168, 0.168, ""])
            lists[split].append(name)
    with open(root / "Data_Entry_2017.csv", "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    (root / "train_val_list.txt").write_text("\n".join(lists["train"]) + "\n")
    (root / "test_list.txt").write_text("\n".join(lists["test"]) + "\n")
    return root
def write_cifar_digits(root: Path, per_batch: int = 24, n_test: int = 40, offset: int = 0) -> Path:
    """``cifar-10-batches-py`` in the official format whose images are mnist5k digits (grey, padded to 32x32, as
    RGB) with their digit labels: a tiny on-disk tree that models actually learn (end-to-end streaming runs)."""
    from xaisec.data import load_mnist5k

    digits = load_mnist5k()
    n_train = 5 * per_batch
    x = torch.cat([digits.x_train[offset:offset + n_train], digits.x_test[offset:offset + n_test]])
    y = torch.cat([digits.y_train[offset:offset + n_train], digits.y_test[offset:offset + n_test]])
    pixels = (torch.nn.functional.pad(x, (2, 2, 2, 2)) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    rows = pixels.reshape(len(x), 3072).numpy()  # CIFAR's row layout: 1024 red, 1024 green, 1024 blue values
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    start = 0
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {"batch_label": f"batch {name}", "labels": y[start:start + n].tolist(), "data": rows[start:start + n],
                 "filenames": [f"digit{i}.png" for i in range(start, start + n)]}
        (folder / name).write_bytes(dumps_py2(batch))
        start += n
    meta = {"num_cases_per_batch": per_batch, "label_names": [str(d) for d in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(dumps_py2(meta))
    return folder
ISIC_2018_IMAGES = {  # split -> [(image id, class column)]
    "Training": [("ISIC_0024306", "NV"), ("ISIC_0024307", "MEL"), ("ISIC_0024308", "NV"), ("ISIC_0024309", "BCC"),
                 ("ISIC_0024310", "MEL"), ("ISIC_0024311", "VASC")],
    "Test": [("ISIC_0034524", "NV"), ("ISIC_0034525", "MEL"), ("ISIC_0034526", "BKL")],
    "Validation": [("ISIC_0034321", "DF"), ("ISIC_0034322", "NV")],
}
ISIC_COLUMNS = {2018: ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"],
                2019: ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]}


def _isic_csv(path: Path, rows, columns) -> None:
    """The challenge's ground truth: ``image,<classes>`` then one-hot rows written as 0.0 / 1.0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(["image", *columns])]
    lines += [",".join([image, *("1.0" if c == label else "0.0" for c in columns)]) for image, label in rows]
    path.write_text("\n".join(lines) + "\n")


def isic_image(path: Path, k: int) -> None:
    """A dermoscopy stand-in JPEG (30x40; the real ones are 450x600 and larger), its colour set by the class ``k``,
    so a small model learns the classes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (30 * k, 90, 250 - 30 * k)).save(path, quality=95)


def write_isic2018(root: Path, splits=("Training", "Test", "Validation"), images=None) -> Path:
    """ISIC 2018 Task 3 as unpacked from the challenge's archives: ``ISIC2018_Task3_<Split>_Input/<id>.jpg`` and
    ``ISIC2018_Task3_<Split>_GroundTruth/ISIC2018_Task3_<Split>_GroundTruth.csv``."""
    images = images or ISIC_2018_IMAGES
    for split in splits:
        for image, label in images[split]:
            isic_image(root / f"ISIC2018_Task3_{split}_Input" / f"{image}.jpg", ISIC_COLUMNS[2018].index(label))
        (root / f"ISIC2018_Task3_{split}_Input" / "LICENSE.txt").write_text("CC-BY-NC\n")
        gt = f"ISIC2018_Task3_{split}_GroundTruth"
        _isic_csv(root / gt / f"{gt}.csv", images[split], ISIC_COLUMNS[2018])
    return root


def write_isic2019(root: Path, per_class: int = 3) -> Path:
    """ISIC 2019's training download: ``ISIC_2019_Training_Input/<id>.jpg`` (some ids ``_downsampled``) and
    ``ISIC_2019_Training_GroundTruth.csv`` with the ``UNK`` column (all 0)."""
    rows = []
    for c, label in enumerate(ISIC_COLUMNS[2019][:8]):
        for i in range(per_class):
            image = f"ISIC_{c * per_class + i:07d}" + ("_downsampled" if i == 0 else "")
            isic_image(root / "ISIC_2019_Training_Input" / f"{image}.jpg", c)
            rows.append((image, label))
    _isic_csv(root / "ISIC_2019_Training_GroundTruth.csv", rows, ISIC_COLUMNS[2019])
    return root


def write_imagenet_folder(root: Path, wnids=("n01440764", "n01443537", "n01484850"), per_class: int = 4,
                          n_val: int = 2) -> Path:
    """An ImageNet-layout folder: ``train/<wnid>/<wnid>_<i>.JPEG`` and ``val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG``
    (ILSVRC2012's val images sorted into class folders), each class one colour so a small model learns it."""
    n = 0
    for c, wnid in enumerate(wnids):
        for split, count in (("train", per_class), ("val", n_val)):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                n += 1
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{n:08d}.JPEG"
                solid((40, 30), (220 * c // max(len(wnids) - 1, 1), 80, 200 - 60 * c)).save(root / split / wnid / name,
                                                                                           format="JPEG", quality=95)
    return root
