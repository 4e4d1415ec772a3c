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

# On-disk formats (each loader in its own module; shared image reading in .images).
from .chestxray import load_chestxray14  # noqa: E402
from .cifar import load_cifar10  # noqa: E402
from .cub import load_cub200  # noqa: E402
from .gtsrb import load_gtsrb  # noqa: E402
from .imagefolder import load_imagefolder  # noqa: E402
from .tabular import TABULAR_SETS, load_sklearn_tabular, tabular_feature_names  # noqa: E402

DATASETS.register("cifar10")(load_cifar10)
DATASETS.register("gtsrb")(load_gtsrb)
DATASETS.register("cub200")(load_cub200)
DATASETS.register("chestxray14")(load_chestxray14)
DATASETS.register("imagefolder")(load_imagefolder)
DATASETS.register("sklearn_tabular")(load_sklearn_tabular)
__all__ += ["TABULAR_SETS", "load_chestxray14", "load_cifar10", "load_cub200", "load_gtsrb", "load_imagefolder",
            "load_sklearn_tabular", "tabular_feature_names"]
