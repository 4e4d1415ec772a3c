"""Reading the small files users hand to xaisec: text index files, ``.npz`` arrays and label arrays.

Every reader turns a damaged file (binary where text is expected, truncated, not a zip archive, missing
arrays, labels that are not class indices) into a :class:`~xaisec.errors.DataError` that names the file,
what is wrong and what would be accepted, instead of a ``UnicodeDecodeError``, ``BadZipFile`` or ``KeyError``.
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

#: more classes than any real label set (ImageNet-21k has 21,841): a larger label is a damaged file, and
#: accepting it would allocate one class name per index
MAX_CLASSES = 100_000


def read_text(path: str | Path, what: str, layout: str = "") -> str:
    """The UTF-8 text file ``path`` (a BOM is dropped); a missing, binary or undecodable file raises
    :class:`DataError` naming ``what`` (the dataset) and ``layout`` (the expected files)."""
    path = Path(path)
    hint = f" Expected layout:\n{layout}" if layout else ""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{what}: cannot read {path}: {exc.strerror or exc}.{hint}") from None
    if b"\x00" in data:
        raise DataError(f"{what}: {path} is a binary file, not a text index file; re-download the dataset.{hint}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what}: {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); the file is damaged or "
                        f"truncated, re-download the dataset.{hint}") from None


def read_text_lines(path: str | Path, what: str, layout: str = "") -> list[str]:
    """The non-empty, stripped lines of the text file ``path`` (see :func:`read_text`)."""
    return [line.strip() for line in read_text(path, what, layout).splitlines() if line.strip()]


def read_npz(path: str | Path, what: str = "data file") -> dict[str, np.ndarray]:
    """All arrays of the ``.npz`` file ``path`` (no pickled objects). A missing, truncated or corrupt file, or
    one with object arrays, raises :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise DataError(f"{what} {path} holds a single array, not an .npz archive; save it with "
                                "numpy.savez(path, x=..., y=...)")
            return {k: f[k] for k in f.files}
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as exc:
        raise DataError(f"{what} {path} is not a readable .npz archive (truncated or corrupt, or it holds pickled "
                        f"objects, which are never loaded): {exc}. Write it with numpy.savez(path, x=..., y=...)"
                        ) from None


def labels_from_array(a: np.ndarray, where: str, count: int | None = None) -> torch.Tensor:
    """Class indices ``(N,)`` int64 from a 1-D array of integers (or of floats that are whole numbers), each in
    ``[0, MAX_CLASSES)``; with ``count``, exactly ``count`` of them (one per image)."""
    a = np.asarray(a)
    if a.ndim != 1:
        raise DataError(f"{where} has shape {a.shape}; expected one class index per image, shape (N,)")
    if count is not None and len(a) != count:
        raise DataError(f"{where} holds {len(a)} labels for {count} images; give exactly one label per image")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            raise DataError(f"{where} holds {int(bad.sum())} label(s) that are not whole numbers (e.g. "
                            f"{a[bad][0]!r}); labels must be integer class indices")
    elif a.dtype.kind not in "iu":
        raise DataError(f"{where} has dtype {a.dtype}; labels must be integer class indices")
    if len(a) and (a.min() < 0 or a.max() >= MAX_CLASSES):
        raise DataError(f"{where} has labels in [{a.min()}, {a.max()}]; class indices must be in [0, {MAX_CLASSES - 1}]")
    return torch.from_numpy(a.astype(np.int64))
