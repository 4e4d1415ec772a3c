"""``imagefolder``: any ImageNet-style tree of class folders.

``root/train/<class>/*.jpg`` with ``root/val/<class>/...`` (or ``root/test/...``); without split
folders, ``root/<class>/*.jpg`` is split stratified by class with
:func:`~xaisec.data.stratified_split`. Class indices follow the sorted class folder names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import DATASETS, ImageDataset, stratified_split
from .images import IMAGE_EXTENSIONS, Size, as_hw, check_nonempty, require_dir, select_subset
from .index import DatasetIndex, ImageFiles

LAYOUT = f"""root/
  train/<class name>/<image>       one folder per class; extensions {', '.join(IMAGE_EXTENSIONS)}
  val/<class name>/<image>         (or test/; the same class names as train/)
or, without split folders (split stratified by test_fraction):
  <class name>/<image>"""

_SPLIT_NAMES = ("train", "val", "test")


def scan_classes(folder: Path) -> dict[str, list[Path]]:
    """``{class name: sorted image paths}`` for each sub-folder of ``folder`` (hidden ones skipped)."""
    classes = {}
    for class_dir in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
        classes[class_dir.name] = sorted(p for p in class_dir.rglob("*")
                                         if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    return classes


def _flatten(classes: dict[str, list[Path]], index: dict[str, int]) -> tuple[list[Path], np.ndarray]:
    paths = [p for name, files in classes.items() for p in files]
    labels = np.asarray([index[name] for name, files in classes.items() for _ in files], dtype=np.int64)
    return paths, labels


@DATASETS.register("imagefolder")
def load_imagefolder(root: str | Path, size: Size = 224, channels: int = 3, test_split: str | None = None,
                     test_fraction: float = 0.2, max_samples: int | None = None, max_per_class: int | None = None,
                     seed: int = 0) -> ImageDataset:
    """Class folders as ``(N,C,H,W)`` float32 in [0,1] (``C`` = ``channels``: 3 RGB or 1 grayscale); the options
    are those of :func:`index_imagefolder`."""
    return index_imagefolder(root, size, channels, test_split, test_fraction, max_samples, max_per_class, seed).load()


def index_imagefolder(root: str | Path, size: Size = 224, channels: int = 3, test_split: str | None = None,
                      test_fraction: float = 0.2, max_samples: int | None = None, max_per_class: int | None = None,
                      seed: int = 0) -> DatasetIndex:
    """The class folders' image paths and labels, not yet decoded.

    ``test_split``: the test folder name (default: ``val``, else ``test``, else a stratified split of
    ``root`` with ``test_fraction`` and ``seed``). Images are resized to ``size`` with PIL bilinear.
    ``max_samples`` / ``max_per_class``: a random subset of each split, fixed by ``seed``.
    """
    as_hw(size)
    if channels not in (1, 3):
        raise DataError(f"imagefolder: channels must be 3 (RGB) or 1 (grayscale), got {channels!r}")
    mode = "RGB" if channels == 3 else "L"
    root = require_dir(root, "imagefolder", LAYOUT)
    if test_split is None:
        test_split = next((s for s in ("val", "test") if (root / s).is_dir()), None)
    elif not (root / test_split).is_dir():
        raise DataError(f"imagefolder: test split folder {root / test_split} does not exist. Expected layout:\n{LAYOUT}")

    if test_split is not None:
        train = scan_classes(require_dir(root / "train", "imagefolder", LAYOUT))
        test = scan_classes(root / test_split)
        extra = sorted(set(test) - set(train))
        if extra:
            raise DataError(f"imagefolder: {root / test_split} has class folders {extra[:5]} that {root / 'train'} lacks")
        index = {name: i for i, name in enumerate(train)}
        train_paths, train_labels = _flatten(train, index)
        test_paths, test_labels = _flatten(test, index)
    else:
        found = [s for s in _SPLIT_NAMES if (root / s).is_dir()]
        if found:
            raise DataError(f"imagefolder: {root} has {found} but no val/ or test/ folder to pair with it. "
                            f"Expected layout:\n{LAYOUT}")
        train = scan_classes(root)
        index = {name: i for i, name in enumerate(train)}
        paths, labels = _flatten(train, index)
        check_nonempty(len(paths), f"imagefolder {root}", f"Expected layout:\n{LAYOUT}")
        tr, te = stratified_split(labels, test_fraction, seed)
        train_paths, train_labels = [paths[i] for i in tr], labels[tr]
        test_paths, test_labels = [paths[i] for i in te], labels[te]

    check_nonempty(len(index), f"imagefolder {root}", f"No class folders. Expected layout:\n{LAYOUT}")
    splits = []
    for name, paths, labels in (("train", train_paths, train_labels), ("test", test_paths, test_labels)):
        check_nonempty(len(paths), f"imagefolder {name} split of {root}", f"Expected layout:\n{LAYOUT}")
        keep = select_subset(labels, len(labels), max_samples, max_per_class, seed)
        splits.append(ImageFiles([paths[i] for i in keep], labels[keep], mode, size))
    return DatasetIndex("imagefolder", *splits, num_classes=len(index), class_names=list(index))
