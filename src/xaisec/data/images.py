"""Shared helpers of the on-disk loaders: checked paths, image reading, subsets.

Every loader reads files through :func:`read_images`, so all formats get the same
conversion (explicit ``RGB``/``L`` mode), the same resize (PIL bilinear), the same
``[0,1]`` float32 ``(N,C,H,W)`` output and the same errors naming the bad file.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..errors import DataError

log = logging.getLogger(__name__)

Size = int | tuple[int, int]
Box = tuple[float, float, float, float]  # (left, upper, right, lower) in pixels, PIL's crop convention

# Below this many files a progress bar is only noise.
_PROGRESS_MIN_FILES = 200

#: what PIL raises for a file that is not a readable image, including one whose header claims more pixels than
#: PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``)
IMAGE_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def as_hw(size: Size) -> tuple[int, int]:
    """``size`` (an int for square images or ``(height, width)``) as a checked ``(H, W)`` pair."""
    try:
        hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    except TypeError:
        hw = ()
    if len(hw) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in hw):
        raise DataError(f"size must be a positive int or a (height, width) pair of positive ints, got {size!r}")
    return int(hw[0]), int(hw[1])


def require_dir(path: str | Path, what: str, layout: str) -> Path:
    """``path`` as a :class:`Path` if it is a directory, else a :class:`DataError` with the expected layout."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{what}: directory {path} does not exist. Expected layout:\n{layout}")
    return path


def require_file(path: str | Path, what: str, layout: str) -> Path:
    """``path`` as a :class:`Path` if it is a file, else a :class:`DataError` with the expected layout."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{what}: file {path} does not exist. Expected layout:\n{layout}")
    return path


def read_image(path: str | Path, mode: str, size: Size, box: Box | None = None) -> np.ndarray:
    """One image as float32 ``(C,H,W)`` in [0,1]: converted to ``mode`` (``"RGB"`` or ``"L"``),
    optionally cropped to ``box``, resized to ``size`` with PIL bilinear."""
    if mode not in ("RGB", "L"):
        raise DataError(f"image mode must be 'RGB' (3 channels) or 'L' (1 channel), got {mode!r}")
    h, w = as_hw(size)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {path} does not exist (listed by the dataset's index files)")
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and not later
            if img.mode.startswith(("I", "F")):
                img = _scale_wide(img)
            elif img.mode not in ("RGB", "L"):
                img = img.convert("RGBA").convert("RGB")  # palette, alpha, CMYK, bilevel: drop alpha
            img = img.convert(mode)
            if box is not None:
                img = img.crop(_clip_box(box, img.size, path))
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except DataError:
        raise
    except IMAGE_READ_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {exc}. The file is corrupt or not an image; "
                        "re-download it or remove it from the dataset's index files") from exc
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _scale_wide(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit grey images (some X-ray PNGs) scaled to 8-bit ``L`` by their dtype range."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max() > 255):
        top = 65535.0
    elif img.mode == "F":
        top = 1.0 if arr.max() <= 1.0 else float(arr.max())
    else:
        top = 255.0
    return Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8))


def _clip_box(box: Box, image_size: tuple[int, int], path: Path) -> tuple[int, int, int, int]:
    """A crop box clipped to the image; an empty box is an error naming the file."""
    w, h = image_size
    left, upper, right, lower = (int(round(v)) for v in box)
    left, upper = max(left, 0), max(upper, 0)
    right, lower = min(right, w), min(lower, h)
    if right <= left or lower <= upper:
        raise DataError(f"crop box {tuple(box)} of image {path} ({w}x{h}) is empty; check the annotation file")
    return left, upper, right, lower


def read_images(paths: Sequence[str | Path], mode: str, size: Size, boxes: Sequence[Box | None] | None = None,
                desc: str = "reading images") -> torch.Tensor:
    """Images ``(N,C,H,W)`` float32 in [0,1] (``C`` = 3 for ``"RGB"``, 1 for ``"L"``), with a tqdm bar
    when there are many files. ``boxes[i]`` (optional) crops image ``i`` before the resize."""
    h, w = as_hw(size)
    channels = 3 if mode == "RGB" else 1
    if boxes is not None and len(boxes) != len(paths):
        raise DataError(f"read_images got {len(paths)} paths but {len(boxes)} crop boxes")
    out = np.empty((len(paths), channels, h, w), dtype=np.float32)
    bar = tqdm(paths, desc=desc, unit="img", leave=False, disable=len(paths) < _PROGRESS_MIN_FILES or None)
    for i, path in enumerate(bar):  # file I/O: one decode per file is unavoidable
        out[i] = read_image(path, mode, (h, w), None if boxes is None else boxes[i])
    log.debug("%s: read %d images of shape %s", desc, len(paths), out.shape[1:])
    return torch.from_numpy(out)


def select_subset(labels: np.ndarray | None, n: int, max_samples: int | None = None,
                  max_per_class: int | None = None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a random subset of ``n`` samples (fixed by ``seed``) with at most
    ``max_per_class`` per class (needs ``labels``) and at most ``max_samples`` in all."""
    for name, value in (("max_samples", max_samples), ("max_per_class", max_per_class)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise DataError(f"{name} must be a positive int or None, got {value!r}")
    if max_samples is None and max_per_class is None:
        return np.arange(n)
    order = np.random.default_rng(seed).permutation(n)
    if max_per_class is not None:
        if labels is None:
            raise DataError("max_per_class needs one class per sample; this dataset is multi-label, use max_samples")
        ranked = np.asarray(labels)[order]
        keep = np.zeros(n, dtype=bool)
        for c in np.unique(ranked):
            keep[np.flatnonzero(ranked == c)[:max_per_class]] = True
        order = order[keep]
    if max_samples is not None:
        order = order[:max_samples]
    return np.sort(order)


def check_nonempty(count: int, what: str, hint: str) -> None:
    """A loader that found no samples raises instead of returning an empty dataset."""
    if count == 0:
        raise DataError(f"{what}: no samples found. {hint}")


def resize_uint8(images: np.ndarray, size: Size, desc: str = "resizing images") -> torch.Tensor:
    """uint8 ``(N,C,h,w)`` pixels as float32 ``(N,C,H,W)`` in [0,1], resized with PIL bilinear when
    ``size`` differs from ``(h, w)``."""
    h, w = as_hw(size)
    if images.shape[2:] == (h, w):
        return torch.from_numpy(images.astype(np.float32) / 255.0)
    out = np.empty((len(images), images.shape[1], h, w), dtype=np.float32)
    bar = tqdm(images, desc=desc, unit="img", leave=False, disable=len(images) < _PROGRESS_MIN_FILES or None)
    for i, img in enumerate(bar):  # PIL resizes one image at a time
        pil = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
        resized = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
        out[i] = resized.reshape(h, w, -1).transpose(2, 0, 1) / 255.0
    return torch.from_numpy(out)
