"""Datasets: the embedded ones (``mnist5k``, ``shapes``) and loaders for on-disk formats.

``load_dataset(name, **options)`` builds any registered dataset.
"""
from __future__ import annotations

from ..registry import Registry
from .base import ImageDataset, stratified_split
from .mnist import load_mnist5k
from .shapes import SHAPE_NAMES, load_shapes, make_shapes

DATASETS = Registry("dataset")
DATASETS.register("mnist5k")(load_mnist5k)
DATASETS.register("shapes")(load_shapes)


def load_dataset(name: str, **options) -> ImageDataset:
    """Load the dataset registered as ``name`` (see ``xaisec list datasets``)."""
    return DATASETS.get(name)(**options)


__all__ = ["DATASETS", "ImageDataset", "SHAPE_NAMES", "load_dataset", "load_mnist5k", "load_shapes",
           "make_shapes", "stratified_split"]
