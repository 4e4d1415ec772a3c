"""``gtsrb``: the German Traffic Sign Recognition Benchmark in its official layout (43 classes).

https://benchmark.ini.rub.de/gtsrb_dataset.html (Stallkamp et al., 2012). Images are PPM files
with a ~10% margin around the sign; ``crop_roi=True`` crops to the annotated sign region first.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import DATASETS, ImageDataset
from .images import Box, Size, as_hw, check_nonempty, require_dir, select_subset
from .index import DatasetIndex, ImageFiles

LAYOUT = """GTSRB/
  Final_Training/Images/00000/GT-00000.csv   Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId
  Final_Training/Images/00000/00000_00000.ppm ...
  ...  (one folder per class, 00000 to 00042)
  Final_Test/Images/00000.ppm ...
  GT-final_test.csv   same columns (from GTSRB_Final_Test_GT.zip; also looked up in Final_Test/ and Final_Test/Images/)"""

NUM_CLASSES = 43
GTSRB_CLASSES = [
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)", "Speed limit (100km/h)",
    "Speed limit (120km/h)", "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop", "No vehicles",
    "Vehicles over 3.5 metric tons prohibited", "No entry", "General caution", "Dangerous curve to the left",
    "Dangerous curve to the right", "Double curve", "Bumpy road", "Slippery road", "Road narrows on the right",
    "Road work", "Traffic signals", "Pedestrians", "Children crossing", "Bicycles crossing", "Beware of ice/snow",
    "Wild animals crossing", "End of all speed and passing limits", "Turn right ahead", "Turn left ahead",
    "Ahead only", "Go straight or right", "Go straight or left", "Keep right", "Keep left",
    "Roundabout mandatory", "End of no passing", "End of no passing by vehicles over 3.5 metric tons",
]
_ROI = ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2")


def read_annotations(csv_path: Path, image_dir: Path) -> tuple[list[Path], np.ndarray, list[Box]]:
    """``(image paths, labels int64, ROI boxes)`` of one GTSRB annotation file (semicolon-separated).

    The ROI corners are inclusive pixel coordinates, hence the +1 on the right/lower edge of the box.
    """
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f, delimiter=";")
            rows, header = list(reader), set(reader.fieldnames or ())
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read GTSRB annotation file {csv_path}: {exc}") from exc
    missing = [c for c in ("Filename", "ClassId", *_ROI) if c not in header]
    if missing:
        hint = " (GT-final_test.test.csv has no labels: use GT-final_test.csv from GTSRB_Final_Test_GT.zip)" \
            if "ClassId" in missing else ""
        raise DataError(f"{csv_path} lacks the column(s) {missing}; expected the semicolon-separated header "
                        f"Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId{hint}")
    paths, labels, boxes = [], [], []
    for line, row in enumerate(rows, start=2):
        try:
            label = int(row["ClassId"])
            x1, y1, x2, y2 = (int(row[c]) for c in _ROI)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{csv_path} line {line}: ClassId and Roi.* must be integers ({exc})") from exc
        if not 0 <= label < NUM_CLASSES:
            raise DataError(f"{csv_path} line {line}: ClassId {label} is outside the {NUM_CLASSES} classes [0, 42]")
        paths.append(image_dir / row["Filename"])
        labels.append(label)
        boxes.append((x1, y1, x2 + 1, y2 + 1))
    return paths, np.asarray(labels, dtype=np.int64), boxes


def _find_test_csv(root: Path) -> Path:
    candidates = [root / "GT-final_test.csv", root / "Final_Test" / "GT-final_test.csv",
                  root / "Final_Test" / "Images" / "GT-final_test.csv"]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"gtsrb: test labels GT-final_test.csv not found (looked at {', '.join(map(str, candidates))}). "
                    f"Download GTSRB_Final_Test_GT.zip and extract it into {root}. Expected layout:\n{LAYOUT}")


def _split(paths: list[Path], labels: np.ndarray, boxes: list[Box], crop_roi: bool, size: Size,
           max_samples: int | None, max_per_class: int | None, seed: int) -> ImageFiles:
    keep = select_subset(labels, len(labels), max_samples, max_per_class, seed)
    return ImageFiles([paths[i] for i in keep], labels[keep], "RGB", size, [boxes[i] for i in keep] if crop_roi else None)


@DATASETS.register("gtsrb")
def load_gtsrb(root: str | Path, size: Size = 32, crop_roi: bool = False, max_samples: int | None = None,
               max_per_class: int | None = None, seed: int = 0) -> ImageDataset:
    """GTSRB as ``(N,3,H,W)`` float32 in [0,1], 43 classes (39,209 train / 12,630 test in full); the options are
    those of :func:`index_gtsrb`."""
    return index_gtsrb(root, size, crop_roi, max_samples, max_per_class, seed).load()


def index_gtsrb(root: str | Path, size: Size = 32, crop_roi: bool = False, max_samples: int | None = None,
                max_per_class: int | None = None, seed: int = 0) -> DatasetIndex:
    """GTSRB's image paths, labels and sign boxes from its annotation files, not yet decoded.

    ``root``: the ``GTSRB`` folder (holding ``Final_Training`` and ``Final_Test``). ``crop_roi``: crop each
    image to its annotated sign box before resizing to ``size`` (PIL bilinear). ``max_samples`` /
    ``max_per_class``: a random subset of each split, fixed by ``seed``.
    """
    as_hw(size)
    root = Path(root).expanduser()
    if (root / "GTSRB" / "Final_Training").is_dir():
        root = root / "GTSRB"
    train_dir = require_dir(root / "Final_Training" / "Images", "gtsrb", LAYOUT)
    test_dir = require_dir(root / "Final_Test" / "Images", "gtsrb", LAYOUT)

    class_dirs = sorted(d for d in train_dir.iterdir() if d.is_dir() and d.name.isdigit())
    check_nonempty(len(class_dirs), f"gtsrb {train_dir}", f"Expected one folder per class. Layout:\n{LAYOUT}")
    paths, labels, boxes = [], [], []
    for class_dir in class_dirs:
        csv_path = class_dir / f"GT-{class_dir.name}.csv"
        if not csv_path.is_file():
            raise DataError(f"gtsrb: annotation file {csv_path} does not exist. Expected layout:\n{LAYOUT}")
        p, y, b = read_annotations(csv_path, class_dir)
        if len(y) and (y != int(class_dir.name)).any():
            raise DataError(f"{csv_path} lists ClassId {sorted(set(y.tolist()))} inside folder {class_dir.name}")
        paths += p
        labels.append(y)
        boxes += b
    labels = np.concatenate(labels)
    check_nonempty(len(labels), f"gtsrb {train_dir}", "The GT-*.csv files list no images.")
    test_paths, test_labels, test_boxes = read_annotations(_find_test_csv(root), test_dir)
    check_nonempty(len(test_labels), "gtsrb GT-final_test.csv", "The file lists no images.")

    opts = dict(crop_roi=crop_roi, size=size, max_samples=max_samples, max_per_class=max_per_class, seed=seed)
    train = _split(paths, labels, boxes, **opts)
    test = _split(test_paths, test_labels, test_boxes, **opts)
    return DatasetIndex("gtsrb", train, test, num_classes=NUM_CLASSES, class_names=list(GTSRB_CLASSES))
