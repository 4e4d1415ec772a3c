"""A decoded uint8 cache of a streamed split, memory-mapped, so the second run of a large dataset skips decoding.

The cache file ``<cache_dir>/<dataset>-<key>.u8`` holds the split's images as uint8 ``(N,C,H,W)`` (a quarter of
float32; 147 KiB per 224 px RGB image). ``key`` hashes what the pixels depend on: every source file's path,
size and modification time, the colour mode, crop boxes and output size (:meth:`ImageFiles.fingerprint`), so
a changed file or option builds a new cache instead of reading a stale one. It is lossless: every decoder of
:mod:`xaisec.data` yields multiples of 1/255. A cache is written to a temporary file and renamed when complete,
so a killed run never leaves a cache that looks whole.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import DataError
from .streaming import ImageStream

log = logging.getLogger(__name__)


def cache_key(stream: ImageStream) -> str:
    """24 hex digits identifying the decoded pixels of ``stream`` (see the module docstring)."""
    text = json.dumps([stream.split.fingerprint(), list(stream.shape)], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_path(stream: ImageStream, cache_dir: str | Path) -> Path:
    """Where the cache of ``stream`` lives inside ``cache_dir``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stream.name)
    return Path(cache_dir).expanduser() / f"{stem}-{cache_key(stream)}.u8"


class CachedImages(Dataset):
    """Items ``(x float32 (C,H,W) in [0,1], y)`` read from a uint8 cache file (memory-mapped on first access in
    each process, so DataLoader workers share the page cache instead of copying the array)."""

    def __init__(self, path: Path, shape: tuple[int, int, int], labels: torch.Tensor, name: str):
        self.path, self._shape, self.labels, self.name = Path(path), tuple(shape), labels, name
        self._pixels: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}  # workers map the file themselves

    def _open(self) -> np.memmap:
        if self._pixels is None:
            self._pixels = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(len(self), *self._shape))
        return self._pixels

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(i)
        try:
            pixels = np.array(self._open()[i], dtype=np.float32)
        except OSError as exc:
            raise DataError(f"{self.name}: cannot read the decoded cache {self.path}: {exc}; delete it to rebuild") from None
        return torch.from_numpy(pixels / 255.0), self.labels[i]


def cached(stream: ImageStream, cache_dir: str | Path, workers: int = 0, batch_size: int = 64) -> CachedImages:
    """``stream`` read through its decoded cache in ``cache_dir``: reused if present (a hit decodes nothing),
    else built now by decoding every image once (``workers`` processes)."""
    from .loader import make_loader

    path = cache_path(stream, cache_dir)
    expected = len(stream) * int(np.prod(stream.shape))
    if path.is_file() and path.stat().st_size == expected:
        log.info("%s: decoded cache hit %s", stream.name, path)
        return CachedImages(path, stream.shape, stream.labels, stream.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cache_dir {path.parent} cannot be created: {exc.strerror or exc}") from None
    log.info("%s: building decoded cache %s (%d images)", stream.name, path, len(stream))
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(len(stream), *stream.shape))
        start = 0
        batches = make_loader(stream, batch_size=batch_size, shuffle=False, workers=workers)
        for x, _ in tqdm(batches, desc=f"caching {stream.name}", unit="batch", leave=False,
                         disable=len(batches) < 20 or None):
            out[start:start + len(x)] = (x.numpy() * 255.0).round().astype(np.uint8)
            start += len(x)
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return CachedImages(path, stream.shape, stream.labels, stream.name)
