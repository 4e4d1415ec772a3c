"""``isic``: the ISIC skin-lesion classification challenges, 2018 Task 3 (HAM10000, 7 diagnoses) and 2019 (8).

https://challenge.isic-archive.com/data/ (Codella et al., arXiv:1902.03368; Tschandl et al., HAM10000,
Sci. Data 2018). ADV2 (Zhang et al., USENIX Security 2020) uses ISIC skin-cancer images for its medical use case.
The ground truth is a CSV with one row per image: the image id, then one column per diagnosis holding 1.0 for the
image's class and 0.0 elsewhere (one-hot). Class indices follow the CSV's column order:

- 2018 Task 3: ``MEL, NV, BCC, AKIEC, BKL, DF, VASC``. Training (10,015 images), Validation (193) and Test
  (1,512) each come as an input folder and a ground-truth folder holding the CSV, as unpacked from the archives.
- 2019: ``MEL, NV, BCC, AK, BKL, DF, VASC, SCC`` plus ``UNK`` (no training image has it; it must be 0 and is not a
  class). Only the training ground truth is in the challenge download (25,331 images; some ids end in
  ``_downsampled``): the test split is then held out of it (``test_split="holdout"``, stratified).

Images are RGB JPEGs ``<input folder>/<image id>.jpg``, resized to ``size`` (PIL bilinear).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import DATASETS, ImageDataset, stratified_split
from .files import read_text
from .images import Size, as_hw, check_nonempty, require_dir, select_subset
from .index import DatasetIndex, ImageFiles

#: the diagnoses (class columns) of each challenge year, in the ground-truth CSV's order
CLASSES = {2018: ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"],
           2019: ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]}
#: columns that must be 0 and are not classes
NOT_CLASSES = {2018: [], 2019: ["UNK"]}
#: {year: {split: (input folder, ground-truth CSV)}}, relative to the root
SPLITS = {
    2018: {split: (f"ISIC2018_Task3_{split.title()}_Input",
                   f"ISIC2018_Task3_{split.title()}_GroundTruth/ISIC2018_Task3_{split.title()}_GroundTruth.csv")
           for split in ("training", "validation", "test")},
    2019: {"training": ("ISIC_2019_Training_Input", "ISIC_2019_Training_GroundTruth.csv")},
}
TEST_SPLITS = ("test", "validation", "holdout")

LAYOUT = """ISIC 2018 (year: 2018):
  ISIC2018_Task3_Training_Input/ISIC_0024306.jpg ...
  ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
      image,MEL,NV,BCC,AKIEC,BKL,DF,VASC   then one row per image: ISIC_0024306,0.0,1.0,0.0,0.0,0.0,0.0,0.0
  ISIC2018_Task3_Test_Input/ + ISIC2018_Task3_Test_GroundTruth/ISIC2018_Task3_Test_GroundTruth.csv   (test_split: test)
  ISIC2018_Task3_Validation_Input/ + ..._Validation_GroundTruth/..._Validation_GroundTruth.csv   (test_split: validation)
ISIC 2019 (year: 2019; test_split: holdout):
  ISIC_2019_Training_Input/ISIC_0000000.jpg ...
  ISIC_2019_Training_GroundTruth.csv   image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK
(each CSV is also found directly in the root)"""


def _csv_path(root: Path, relative: str) -> Path:
    """The ground-truth CSV at ``relative`` or directly in ``root`` (both layouts occur after unpacking)."""
    for candidate in (root / relative, root / Path(relative).name):
        if candidate.is_file():
            return candidate
    raise DataError(f"isic: the ground-truth file {root / relative} does not exist (nor {root / Path(relative).name})."
                    f" Expected layout:\n{LAYOUT}")


def read_ground_truth(path: Path, year: int) -> tuple[list[str], np.ndarray]:
    """``(image ids, int64 class indices)`` from an ISIC ground-truth CSV; every row must be one-hot over the
    year's classes (:data:`CLASSES`), with 0 in the :data:`NOT_CLASSES` columns."""
    classes, zeros = CLASSES[year], NOT_CLASSES[year]
    reader = csv.reader(io.StringIO(read_text(path, "isic", LAYOUT), newline=""))
    try:
        header = [c.strip() for c in next(reader, [])]
        expected = ["image", *classes]
        if header[:len(expected)] != expected or any(c not in zeros for c in header[len(expected):]):
            raise DataError(f"{path}: the header is {header[:10]}; ISIC {year} ground truth has the columns "
                            f"{expected + zeros} (is it the other year's file? set data.options.year)")
        ids, labels = [], []
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path} line {line}: {len(row)} fields for the {len(header)} columns {header} "
                                "(a truncated line?)")
            try:
                values = [float(cell) for cell in row[1:]]
            except ValueError:
                raise DataError(f"{path} line {line}: {row[1:]} are not all numbers; each class column holds 1.0 "
                                "for the image's diagnosis and 0.0 elsewhere") from None
            onehot, extra = values[:len(classes)], values[len(classes):]
            if any(v not in (0.0, 1.0) for v in values) or sum(onehot) != 1 or any(extra):
                raise DataError(f"{path} line {line}: image {row[0]!r} has {dict(zip(header[1:], row[1:]))}; each row "
                                f"must be one-hot: 1.0 in exactly one of {classes}, 0.0 elsewhere"
                                + (f" (and 0 in {zeros})" if zeros else ""))
            ids.append(row[0].strip())
            labels.append(onehot.index(1.0))
    except csv.Error as exc:
        raise DataError(f"isic: cannot read {path}: {exc}") from None
    check_nonempty(len(ids), f"isic {path}", "The ground-truth CSV has a header but no image rows.")
    return ids, np.asarray(labels, dtype=np.int64)


def _split_files(root: Path, year: int, split: str) -> tuple[list[Path], np.ndarray]:
    folder, csv_name = SPLITS[year][split]
    ids, labels = read_ground_truth(_csv_path(root, csv_name), year)
    image_dir = require_dir(root / folder, "isic", LAYOUT)
    paths = [image_dir / f"{image}.jpg" for image in ids]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"isic: {len(missing)} image(s) of the ground truth {csv_name} are not in {image_dir}, e.g. "
                        f"{missing[:3]}; unpack the whole input archive (images are <image id>.jpg)")
    return paths, labels


@DATASETS.register("isic")
def load_isic(root: str | Path, year: int = 2018, size: Size = 224, test_split: str | None = None,
              test_fraction: float = 0.2, max_samples: int | None = None, max_per_class: int | None = None,
              seed: int = 0) -> ImageDataset:
    """ISIC 2018 Task 3 / 2019 as ``(N,3,H,W)`` float32 in [0,1]; the options are those of :func:`index_isic`."""
    return index_isic(root, year, size, test_split, test_fraction, max_samples, max_per_class, seed).load()


def index_isic(root: str | Path, year: int = 2018, size: Size = 224, test_split: str | None = None,
               test_fraction: float = 0.2, max_samples: int | None = None, max_per_class: int | None = None,
               seed: int = 0) -> DatasetIndex:
    """The ISIC challenge's image paths and diagnoses (int classes, :data:`CLASSES`), not yet decoded.

    ``year``: 2018 (Task 3) or 2019. ``test_split``: ``test`` or ``validation`` (2018's official splits, with their
    ground truth), or ``holdout`` (a stratified ``test_fraction`` of the training images, fixed by ``seed``);
    default: 2018's Test, else its Validation, else a holdout. ``max_samples`` / ``max_per_class``: a random subset
    of each split, fixed by ``seed``.
    """
    as_hw(size)
    if year not in CLASSES:
        raise DataError(f"isic: year must be one of {sorted(CLASSES)}, got {year!r}")
    if test_split is not None and test_split not in TEST_SPLITS:
        raise DataError(f"isic: test_split must be one of {list(TEST_SPLITS)} (or null), got {test_split!r}")
    root = require_dir(root, "isic", LAYOUT)
    official = [s for s in ("test", "validation") if s in SPLITS[year]]
    if test_split is None:
        test_split = next((s for s in official if (root / SPLITS[year][s][0]).is_dir()), "holdout")
    elif test_split != "holdout" and test_split not in official:
        raise DataError(f"isic: ISIC {year} has no {test_split} ground truth in the challenge download; use "
                        f"test_split: holdout (a stratified part of the training images)")

    paths, labels = _split_files(root, year, "training")
    if test_split == "holdout":
        tr, te = stratified_split(labels, test_fraction, seed)
        parts = [([paths[i] for i in tr], labels[tr]), ([paths[i] for i in te], labels[te])]
    else:
        parts = [(paths, labels), _split_files(root, year, test_split)]
    splits = []
    for name, (split_paths, split_labels) in zip(("train", "test"), parts):
        check_nonempty(len(split_paths), f"isic {name} split", "Too few images for a holdout; lower test_fraction.")
        keep = select_subset(split_labels, len(split_labels), max_samples, max_per_class, seed)
        splits.append(ImageFiles([split_paths[i] for i in keep], split_labels[keep], "RGB", size))
    return DatasetIndex("isic", *splits, num_classes=len(CLASSES[year]), class_names=list(CLASSES[year]))
