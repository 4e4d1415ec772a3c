"""A decoded uint8 cache of a streamed split, memory-mapped, so the second run of a large dataset skips decoding.

The cache file ``<cache_dir>/<dataset>-<key>.u8`` (raw bytes) holds the split's images as uint8 ``(N,C,H,W)`` (a quarter of
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
    """Items ``(x float32 (C,H,W) in [0,1], y)`` read from a uint8 cache file, one positioned read per item (the
    file is opened on first access in each process). Reads go through the page cache without mapping the file,
    so the process's resident memory does not grow with the number of images read."""

    def __init__(self, path: Path, shape: tuple[int, int, int], labels: torch.Tensor, name: str):
        self.path, self._shape, self.labels, self.name = Path(path), tuple(shape), labels, name
        self._item_bytes = int(np.prod(self._shape))
        self._fd: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}  # each worker opens the file itself

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(i)
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            data = os.pread(self._fd, self._item_bytes, i * self._item_bytes)
        except OSError as exc:
            raise DataError(f"{self.name}: cannot read the decoded cache {self.path}: {exc}; delete it to rebuild") from None
        if len(data) != self._item_bytes:
            raise DataError(f"{self.name}: the decoded cache {self.path} is truncated at image {i}; delete it to rebuild")
        pixels = np.frombuffer(data, dtype=np.uint8).reshape(self._shape).astype(np.float32)
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
        batches = make_loader(stream, batch_size=batch_size, shuffle=False, workers=workers)
        with open(tmp, "wb") as out:  # written in order, not mapped: memory stays flat however large the split
            for x, _ in tqdm(batches, desc=f"caching {stream.name}", unit="batch", leave=False,
                             disable=len(batches) < 20 or None):
                out.write((x.numpy() * 255.0).round().astype(np.uint8).tobytes())
            out.flush()
            os.fsync(out.fileno())
        del batches
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return CachedImages(path, stream.shape, stream.labels, stream.name)
