"""``cifar10``: the official python version of CIFAR-10 (``cifar-10-batches-py``).

https://www.cs.toronto.edu/~kriz/cifar.html

Security: the official files are Python pickles, and unpickling an untrusted file can run
arbitrary code. Load only files you trust (the official archive, checked against its MD5
``c58f30108f718f92721af3b95e74349a``). As a second line of defence the batches are read with
``pickle`` (``encoding="bytes"``, the official format) through an unpickler that only resolves
the few numpy globals a CIFAR batch contains, so a file that tries to import anything else is
rejected instead of executed.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .base import DATASETS, ImageDataset
from .images import Size, as_hw, require_dir, require_file, select_subset
from .index import DatasetIndex, PixelArray

try:  # numpy >= 2 moved numpy.core to numpy._core; old pickles still name numpy.core
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core import multiarray as _multiarray, numeric as _numeric

LAYOUT = """cifar-10-batches-py/
  data_batch_1 ... data_batch_5   pickled dict {b"data": uint8 (N, 3072) as R, G, B planes of 32x32, b"labels": [int]}
  test_batch                      same format (10,000 images)
  batches.meta                    pickled dict {b"label_names": [bytes]} (optional)
(download and extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)"""

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Everything a CIFAR batch pickled by numpy 1.x or 2.x may reference; nothing that runs code.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles written by Python 3 store bytes this way
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the numpy globals of :data:`_ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch file") from None


def _unpickle(path: Path) -> Any:
    """The object pickled in ``path`` (trusted files only, see the module docstring)."""
    with open(path, "rb") as f:
        try:
            return _BatchUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise DataError(f"cannot unpickle {path}: {exc}. It is not an official CIFAR-10 python batch; "
                            f"re-download it. Expected layout:\n{LAYOUT}") from exc


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as ``(pixels uint8 (N,3,32,32), labels int64 (N,))``."""
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        hint = " (this looks like CIFAR-100, which this loader does not read)" \
            if isinstance(batch, dict) and b"fine_labels" in batch else ""
        raise DataError(f"{path} is not a CIFAR-10 batch: expected a dict with keys b'data' and b'labels', "
                        f"got {keys}{hint}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: b'labels' must hold {len(data)} integers, got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= 10):
        raise DataError(f"{path}: labels in [{labels.min()}, {labels.max()}] are outside the 10 classes [0, 9]")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _class_names(folder: Path) -> list[str]:
    meta_path = folder / "batches.meta"
    if not meta_path.is_file():
        return list(CIFAR10_CLASSES)
    meta = _unpickle(meta_path)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"{meta_path}: expected a dict with b'label_names' (10 names); got {type(meta).__name__}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


@DATASETS.register("cifar10")
def load_cifar10(root: str | Path, size: Size = 32, max_samples: int | None = None,
                 max_per_class: int | None = None, seed: int = 0) -> ImageDataset:
    """CIFAR-10 as ``(N,3,H,W)`` float32 in [0,1] (50,000 train / 10,000 test, 10 classes); the options are
    those of :func:`index_cifar10`."""
    return index_cifar10(root, size, max_samples, max_per_class, seed).load()


def index_cifar10(root: str | Path, size: Size = 32, max_samples: int | None = None,
                  max_per_class: int | None = None, seed: int = 0) -> DatasetIndex:
    """CIFAR-10's uint8 pixels (60,000 x 3 KiB) and labels, resized one image at a time on decode.

    ``root``: the ``cifar-10-batches-py`` folder (or its parent). ``size``: output size (PIL bilinear
    when not 32). ``max_samples`` / ``max_per_class``: a random subset of each split, fixed by ``seed``.
    """
    as_hw(size)
    folder = Path(root).expanduser()
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    require_dir(folder, "cifar10", LAYOUT)
    splits = {}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        parts = [read_batch(require_file(folder / name, "cifar10", LAYOUT)) for name in names]
        pixels = np.concatenate([p for p, _ in parts])
        labels = np.concatenate([y for _, y in parts])
        keep = select_subset(labels, len(labels), max_samples, max_per_class, seed)
        splits[split] = PixelArray(pixels[keep], labels[keep], size, origin=f"{folder} {split} batches")
    return DatasetIndex("cifar10", splits["train"], splits["test"], num_classes=10, class_names=_class_names(folder))
