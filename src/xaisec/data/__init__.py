"""Datasets: the embedded ones (``mnist5k``, ``shapes``) and loaders for on-disk formats.

``load_dataset(name, **options)`` builds any registered dataset (``xaisec list datasets``).
"""
from __future__ import annotations

from ..registry import Registry
from .base import ImageDataset, stratified_split
from .chestxray import load_chestxray14
from .cifar import load_cifar10
from .cub import load_cub200
from .gtsrb import load_gtsrb
from .imagefolder import load_imagefolder
from .mnist import load_mnist5k
from .npz import images_from_array, load_npz
from .shapes import SHAPE_NAMES, load_shapes, make_shapes
from .tabular import (CREDIT_DEFAULT_FEATURES, TABULAR_SETS, load_credit_default, load_sklearn_tabular,
                      read_credit_default, tabular_feature_names)

DATASETS = Registry("dataset")
for _name, _loader in (("mnist5k", load_mnist5k), ("shapes", load_shapes), ("cifar10", load_cifar10),
                       ("gtsrb", load_gtsrb), ("cub200", load_cub200), ("chestxray14", load_chestxray14),
                       ("imagefolder", load_imagefolder), ("sklearn_tabular", load_sklearn_tabular),
                       ("credit_default", load_credit_default), ("npz", load_npz)):
    DATASETS.register(_name)(_loader)


def load_dataset(name: str, **options) -> ImageDataset:
    """Load the dataset registered as ``name``; on-disk formats take ``root=PATH``."""
    return DATASETS.get(name)(**options)


from .spec import DataSpec, load_data, parse_data_spec  # noqa: E402  (needs DATASETS)


__all__ = ["CREDIT_DEFAULT_FEATURES", "DATASETS", "DataSpec", "ImageDataset", "SHAPE_NAMES", "TABULAR_SETS",
           "images_from_array", "load_chestxray14", "load_cifar10", "load_credit_default", "load_cub200", "load_data",
           "load_dataset", "load_gtsrb", "load_imagefolder", "load_mnist5k", "load_npz", "load_shapes",
           "load_sklearn_tabular", "make_shapes", "parse_data_spec", "read_credit_default", "stratified_split",
           "tabular_feature_names"]
