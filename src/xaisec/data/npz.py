"""``npz``: images and labels saved with ``numpy.savez`` (read with ``allow_pickle=False``: arrays only).

Arrays: ``x`` (N,C,H,W) or (N,H,W,C) or (N,H,W), uint8 0-255 or float in [0,1], integer labels ``y`` (N,); optional
``x_test``/``y_test`` (otherwise 30% of the samples are held out, stratified by class).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..validation import check_images
from .base import ImageDataset, stratified_split

LAYOUT = """file.npz (numpy.savez) with arrays
  x        images (N,C,H,W), (N,H,W,C) or (N,H,W); uint8 0-255 or float in [0,1]
  y        integer class labels (N,)
  x_test, y_test   optional held-out split (else 30% of x, y is held out, stratified)"""


def images_from_array(a: np.ndarray, where: str) -> torch.Tensor:
    """(N,C,H,W) float images in [0,1] from an (N,H,W), (N,C,H,W) or (N,H,W,C) array, uint8 or float."""
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise DataError(f"{where} has shape {a.shape}; expected (N,C,H,W) or (N,H,W,C) images")
    if a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)  # channels-last -> channels-first
    t = torch.from_numpy(np.ascontiguousarray(a))
    t = t.float() / 255 if a.dtype == np.uint8 else t.float()
    return check_images(t, where)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file (no pickled objects); a missing or unreadable file is a DataError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data file {path} does not exist. Expected:\n{LAYOUT}")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as an .npz file of arrays: {exc}") from exc


def load_npz(path: str | Path) -> ImageDataset:
    """An image classification set from an ``.npz`` file (see the module docstring for the arrays)."""
    path = Path(path).expanduser()
    arrays = read_npz(path)
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path} must hold arrays 'x' (images) and 'y' (labels); it has {sorted(arrays)}")
    x, y = images_from_array(arrays["x"], f"{path}: x"), torch.from_numpy(arrays["y"].astype(np.int64))
    if "x_test" in arrays:
        if "y_test" not in arrays:
            raise DataError(f"{path} has 'x_test' but no 'y_test'; save both or neither")
        x_test = images_from_array(arrays["x_test"], f"{path}: x_test")
        y_test = torch.from_numpy(arrays["y_test"].astype(np.int64))
    else:
        train, test = stratified_split(y.numpy(), 0.3, seed=0)
        x, y, x_test, y_test = x[train], y[train], x[test], y[test]
    classes = int(max(y.max(), y_test.max())) + 1
    return ImageDataset(path.stem, x, y, x_test, y_test, num_classes=classes)
