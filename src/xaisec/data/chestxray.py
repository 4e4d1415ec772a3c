"""``chestxray14``: NIH ChestX-ray14 (112,120 frontal chest radiographs, 14 disease labels).

https://nihcc.app.box.com/v/ChestXray-NIHCC (Wang et al., CVPR 2017, arXiv:1705.02315).
Multi-label by default: ``y`` is float ``(N,14)`` 0/1 in the order of :data:`DISEASES`
("No Finding" = all zeros). ``single_label=True`` follows Latka et al. ("Stealthy Sabotage",
section 3.6): only images with exactly one entry in ``Finding Labels`` are kept, with 15 int classes,
the 14 diseases then "No Finding" as class 14 (the paper's target class c=14 is "No finding").
Images are grayscale: ``x`` is ``(N,1,H,W)``.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import DATASETS, ImageDataset
from .files import read_text, read_text_lines
from .images import IMAGE_EXTENSIONS, Size, as_hw, check_nonempty, require_dir, require_file, select_subset
from .index import DatasetIndex, ImageFiles

LAYOUT = """ChestX-ray14/
  Data_Entry_2017.csv   columns "Image Index", "Finding Labels" (e.g. "Effusion|Mass" or "No Finding"), ...
  train_val_list.txt    one image file name per line
  test_list.txt         one image file name per line
  images/00000001_000.png ...   (or images_001/images/..., images_002/images/..., as unpacked from the archives)"""

DISEASES = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
            "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
NO_FINDING = "No Finding"
_COLUMNS = ("Image Index", "Finding Labels")


def read_findings(csv_path: Path) -> dict[str, list[str]]:
    """``{image file name: [finding, ...]}`` from ``Data_Entry_2017.csv`` ("No Finding" kept as a finding)."""
    known = set(DISEASES) | {NO_FINDING}
    reader = csv.DictReader(io.StringIO(read_text(csv_path, "chestxray14", LAYOUT), newline=""))
    try:
        header = [c.strip() for c in reader.fieldnames or ()]
        if any(c not in header for c in _COLUMNS):
            raise DataError(f"{csv_path} lacks the columns {list(_COLUMNS)} (found {header[:6]}). Expected layout:\n{LAYOUT}")
        reader.fieldnames = header
        findings = {}
        for line, row in enumerate(reader, start=2):
            names = [n.strip() for n in (row["Finding Labels"] or "").split("|") if n.strip()]
            unknown = [n for n in names if n not in known]
            if unknown or not names or (NO_FINDING in names and len(names) > 1):
                raise DataError(f"{csv_path} line {line}: invalid Finding Labels {row['Finding Labels']!r}; "
                                f"expected '|'-joined names from {DISEASES} or {NO_FINDING!r} alone")
            image = (row["Image Index"] or "").strip()
            if not image:
                raise DataError(f"{csv_path} line {line}: no Image Index (a truncated line?); every line needs "
                                f"the columns {list(_COLUMNS)}")
            findings[image] = names
    except csv.Error as exc:
        raise DataError(f"cannot read {csv_path}: {exc}") from exc
    return findings


def index_images(root: Path) -> dict[str, Path]:
    """``{file name: path}`` of every image in ``images/`` and ``images_*/images/`` (first one wins)."""
    found: dict[str, Path] = {}
    for folder in [root / "images", *sorted(root.glob("images_*/images")), *sorted(root.glob("images_*"))]:
        if folder.is_dir():
            for path in folder.iterdir():
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    found.setdefault(path.name, path)
    return found


def _read_list(path: Path) -> list[str]:
    return read_text_lines(require_file(path, "chestxray14", LAYOUT), "chestxray14", LAYOUT)


@DATASETS.register("chestxray14")
def load_chestxray14(root: str | Path, size: Size = 224, single_label: bool = False, skip_missing: bool = False,
                     max_samples: int | None = None, max_per_class: int | None = None, seed: int = 0) -> ImageDataset:
    """ChestX-ray14 as ``(N,1,H,W)`` float32 in [0,1] (in memory: ~200 KiB per 224 px image; stream the full
    112,120 images with :func:`xaisec.data.open_dataset`); the options are those of :func:`index_chestxray14`."""
    return index_chestxray14(root, size, single_label, skip_missing, max_samples, max_per_class, seed).load()


def index_chestxray14(root: str | Path, size: Size = 224, single_label: bool = False, skip_missing: bool = False,
                      max_samples: int | None = None, max_per_class: int | None = None,
                      seed: int = 0) -> DatasetIndex:
    """ChestX-ray14's image paths and findings with the official train_val / test lists, not yet decoded.

    ``single_label``: keep images with exactly one finding, int labels in 15 classes (else float ``(N,14)``
    multi-hot, ``multilabel=True``). ``skip_missing``: drop listed images whose file is absent (a partial
    download) instead of raising. ``max_samples`` / ``max_per_class`` (single-label only): a random subset
    of each split, fixed by ``seed``. Images are resized to ``size`` with PIL bilinear.
    """
    as_hw(size)
    root = require_dir(root, "chestxray14", LAYOUT)
    findings = read_findings(require_file(root / "Data_Entry_2017.csv", "chestxray14", LAYOUT))
    files = index_images(root)
    check_nonempty(len(files), f"chestxray14 {root}", f"No images in images/ or images_*/images/. Layout:\n{LAYOUT}")
    class_names = DISEASES + [NO_FINDING] if single_label else list(DISEASES)
    column = {name: i for i, name in enumerate(class_names)}

    splits = []
    for list_name in ("train_val_list.txt", "test_list.txt"):
        names = _read_list(root / list_name)
        unknown = [n for n in names if n not in findings]
        if unknown:
            raise DataError(f"{root / list_name} lists {len(unknown)} image(s) missing from Data_Entry_2017.csv, "
                            f"e.g. {unknown[:3]}")
        absent = [n for n in names if n not in files]
        if absent and not skip_missing:
            raise DataError(f"chestxray14: {len(absent)} image(s) of {list_name} are not under {root}/images "
                            f"or images_*/images, e.g. {absent[:3]}. Unpack all archives, or pass "
                            "skip_missing=True to use the images present")
        names = [n for n in names if n in files]
        if single_label:
            names = [n for n in names if len(findings[n]) == 1]
            labels = np.asarray([column[findings[n][0]] for n in names], dtype=np.int64)
        else:
            labels = np.zeros((len(names), len(DISEASES)), dtype=np.float32)
            for i, n in enumerate(names):
                labels[i, [column[f] for f in findings[n] if f != NO_FINDING]] = 1.0
        check_nonempty(len(names), f"chestxray14 {list_name}", "No listed image is present (and single-label).")
        keep = select_subset(labels if single_label else None, len(names), max_samples, max_per_class, seed)
        splits.append(ImageFiles([files[names[i]] for i in keep], labels[keep], "L", size))
    return DatasetIndex("chestxray14", *splits, num_classes=len(class_names), class_names=class_names,
                        multilabel=not single_label)
