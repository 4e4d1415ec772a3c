"""``cub200``: Caltech-UCSD Birds-200-2011 (200 bird species, 5,994 train / 5,794 test).

https://www.vision.caltech.edu/datasets/cub_200_2011/ (Wah et al., 2011). The official split
file decides train/test; ``crop_bbox=True`` crops each image to its bird box; ``masks=True``
adds the bird segmentations (the separate ``segmentations.tgz``) as ground-truth object masks.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import DATASETS, ImageDataset
from .files import read_text
from .images import Box, Size, as_hw, check_nonempty, require_dir, require_file, select_subset
from .index import DatasetIndex, ImageFiles

LAYOUT = """CUB_200_2011/
  images.txt               <image_id> <class_dir>/<file>.jpg
  image_class_labels.txt   <image_id> <class_id>   (1-based)
  train_test_split.txt     <image_id> <1 = train, 0 = test>
  classes.txt              <class_id> <class_dir>  (e.g. 001.Black_footed_Albatross)
  bounding_boxes.txt       <image_id> <x> <y> <width> <height>   (only for crop_bbox=True)
  images/<class_dir>/<file>.jpg
  segmentations/<class_dir>/<file>.png   (only for masks=True; also looked up next to CUB_200_2011/)"""


def _read_table(path: Path, columns: int) -> dict[int, list[str]]:
    """``{id: [fields...]}`` of a whitespace-separated CUB index file with ``columns`` fields per line."""
    table: dict[int, list[str]] = {}
    for line_no, line in enumerate(read_text(require_file(path, "cub200", LAYOUT), "cub200", LAYOUT).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=columns - 1)
        try:
            if len(fields) != columns:
                raise ValueError(f"expected {columns} fields, got {len(fields)}")
            table[int(fields[0])] = fields[1:]
        except ValueError as exc:
            raise DataError(f"{path} line {line_no}: {exc}: {line.strip()!r}. Expected layout:\n{LAYOUT}") from exc
    return table


def _lookup(table: dict[int, list[str]], image_id: int, path: Path) -> list[str]:
    if image_id not in table:
        raise DataError(f"{path} has no entry for image id {image_id} listed in images.txt")
    return table[image_id]


def _as_number(text: str, path: Path, kind: type = int) -> float:
    try:
        return kind(text)
    except ValueError as exc:
        raise DataError(f"{path}: {text!r} is not a number") from exc


@DATASETS.register("cub200")
def load_cub200(root: str | Path, size: Size = 224, crop_bbox: bool = False, masks: bool = False,
                max_samples: int | None = None, max_per_class: int | None = None, seed: int = 0) -> ImageDataset:
    """CUB-200-2011 as ``(N,3,H,W)`` float32 in [0,1]; the options are those of :func:`index_cub200`."""
    return index_cub200(root, size, crop_bbox, masks, max_samples, max_per_class, seed).load()


def index_cub200(root: str | Path, size: Size = 224, crop_bbox: bool = False, masks: bool = False,
                 max_samples: int | None = None, max_per_class: int | None = None, seed: int = 0) -> DatasetIndex:
    """CUB-200-2011's image paths, labels (200 classes, 0-based) and boxes from its index files, not yet decoded.

    ``root``: the ``CUB_200_2011`` folder (or its parent). ``crop_bbox``: crop to ``bounding_boxes.txt``
    before resizing to ``size`` (PIL bilinear). ``masks``: also read ``segmentations/`` into bool
    ``masks_*`` ``(N,1,H,W)`` (pixel > 0.5). ``max_samples`` / ``max_per_class``: a random subset of each
    split, fixed by ``seed``.
    """
    as_hw(size)
    root = Path(root).expanduser()
    if (root / "CUB_200_2011").is_dir():
        root = root / "CUB_200_2011"
    require_dir(root, "cub200", LAYOUT)
    image_dir = require_dir(root / "images", "cub200", LAYOUT)
    images = _read_table(root / "images.txt", 2)
    class_table = _read_table(root / "classes.txt", 2)
    labels_table = _read_table(root / "image_class_labels.txt", 2)
    split_table = _read_table(root / "train_test_split.txt", 2)
    boxes_table = _read_table(root / "bounding_boxes.txt", 5) if crop_bbox else {}
    seg_dir = _segmentation_dir(root) if masks else None

    num_classes = len(class_table)
    if sorted(class_table) != list(range(1, num_classes + 1)):
        raise DataError(f"{root / 'classes.txt'}: class ids must be 1..{num_classes} (1-based), got {sorted(class_table)[:5]}...")
    class_names = [re.sub(r"^\d+\.", "", class_table[i][0].strip()) for i in range(1, num_classes + 1)]

    per_split: dict[bool, tuple[list[str], list[int], list[Box | None]]] = {True: ([], [], []), False: ([], [], [])}
    for image_id in sorted(images):
        rel = images[image_id][0].strip()
        label_path = root / "image_class_labels.txt"
        label = int(_as_number(_lookup(labels_table, image_id, label_path)[0], label_path))
        if not 1 <= label <= num_classes:
            raise DataError(f"{root / 'image_class_labels.txt'}: image {image_id} has class {label}, outside 1..{num_classes}")
        flag = _lookup(split_table, image_id, root / "train_test_split.txt")[0].strip()
        if flag not in ("0", "1"):
            raise DataError(f"{root / 'train_test_split.txt'}: image {image_id} has split flag {flag!r}; expected 1 (train) or 0 (test)")
        box = None
        if crop_bbox:
            x, y, w, h = (_as_number(v, root / "bounding_boxes.txt", float)
                          for v in _lookup(boxes_table, image_id, root / "bounding_boxes.txt"))
            box = (x, y, x + w, y + h)
        rels, labels, boxes = per_split[flag == "1"]
        rels.append(rel)
        labels.append(label - 1)
        boxes.append(box)

    splits = []
    for is_train in (True, False):
        rels, labels, boxes = per_split[is_train]
        name = "train" if is_train else "test"
        check_nonempty(len(rels), f"cub200 {name} split", f"train_test_split.txt marks no image as {name}.")
        y = np.asarray(labels, dtype=np.int64)
        keep = select_subset(y, len(y), max_samples, max_per_class, seed)
        kept_boxes = [boxes[i] for i in keep] if crop_bbox else None
        x = ImageFiles([image_dir / rels[i] for i in keep], y[keep], "RGB", size, kept_boxes)
        m = None
        if seg_dir is not None:
            m = ImageFiles([seg_dir / Path(rels[i]).with_suffix(".png") for i in keep], y[keep], "L", size, kept_boxes)
        splits.append((x, m))
    (x_tr, m_tr), (x_te, m_te) = splits
    return DatasetIndex("cub200", x_tr, x_te, num_classes=num_classes, class_names=class_names,
                        masks_train=m_tr, masks_test=m_te)


def _segmentation_dir(root: Path) -> Path:
    for candidate in (root / "segmentations", root.parent / "segmentations"):
        if candidate.is_dir():
            return candidate
    raise DataError(f"cub200: masks=True needs the segmentations folder ({root / 'segmentations'} or "
                    f"{root.parent / 'segmentations'}; download segmentations.tgz). Expected layout:\n{LAYOUT}")
