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
from .base import DATASETS, ImageDataset, stratified_split
from .files import labels_from_array, read_npz

LAYOUT = """file.npz (numpy.savez) with arrays
  x        images (N,C,H,W), (N,H,W,C) or (N,H,W); uint8 0-255 or float in [0,1]
  y        integer class labels (N,)
  x_test, y_test   optional held-out split (else 30% of x, y is held out, stratified)"""


def images_from_array(a: np.ndarray, where: str) -> torch.Tensor:
    """(N,C,H,W) float images in [0,1] from an (N,H,W), (N,C,H,W) or (N,H,W,C) array, uint8 or float."""
    if a.dtype.kind not in "uif":
        raise DataError(f"{where} has dtype {a.dtype}; images must be uint8 (0-255) or floats in [0,1]")
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise DataError(f"{where} has shape {a.shape}; expected (N,C,H,W) or (N,H,W,C) images")
    if a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)  # channels-last -> channels-first
    t = torch.from_numpy(np.ascontiguousarray(a))
    t = t.float() / 255 if a.dtype == np.uint8 else t.float()
    return check_images(t, where)


@DATASETS.register("npz")
def load_npz(path: str | Path) -> ImageDataset:
    """An image classification set from an ``.npz`` file (see the module docstring for the arrays)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data file {path} does not exist. Expected:\n{LAYOUT}")
    arrays = read_npz(path)
    if "x" not in arrays and "y" not in arrays and {"x_train", "y_train"} <= set(arrays):
        arrays["x"], arrays["y"] = arrays.pop("x_train"), arrays.pop("y_train")  # the other common spelling
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path} must hold arrays 'x' (images) and 'y' (labels) (or x_train/y_train); it has "
                        f"{sorted(arrays)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        have, lack = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise DataError(f"{path} has {have} but no {lack}; give both test arrays or neither (then 30% of x is held out)")
    x = images_from_array(arrays["x"], f"{path}: x")
    y = labels_from_array(arrays["y"], f"{path}: y", count=len(x))
    if "x_test" in arrays:
        x_test = images_from_array(arrays["x_test"], f"{path}: x_test")
        y_test = labels_from_array(arrays["y_test"], f"{path}: y_test", count=len(x_test))
    else:
        train, test = stratified_split(y.numpy(), 0.3, seed=0)
        x, y, x_test, y_test = x[train], y[train], x[test], y[test]
    classes = int(max(y.max(), y_test.max())) + 1
    return ImageDataset(path.stem, x, y, x_test, y_test, num_classes=classes)
