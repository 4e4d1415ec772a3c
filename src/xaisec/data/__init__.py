"""Datasets: the embedded ones (``mnist5k``, ``shapes``) and loaders for on-disk formats.

``load_dataset(name, **options)`` builds any registered dataset in memory (``xaisec list datasets``);
``open_dataset(name, **options)`` gives the same data as ``torch.utils.data.Dataset``s, the on-disk formats
decoded lazily (:data:`STREAMABLE`), with :func:`make_loader` for the batches.
"""
from __future__ import annotations

from .base import DATASETS, ImageDataset, stratified_split
from .chestxray import index_chestxray14, load_chestxray14
from .cifar import index_cifar10, load_cifar10
from .cub import index_cub200, load_cub200
from .gtsrb import index_gtsrb, load_gtsrb
from .imagefolder import index_imagefolder, load_imagefolder
from .index import DatasetIndex, ImageFiles, PixelArray
from .isic import index_isic, load_isic
from .loader import SeededOrder, StreamBatches, make_loader
from .mnist import load_mnist5k
from .npz import images_from_array, load_npz
from .shapes import SHAPE_NAMES, load_shapes, make_shapes
from .streaming import (ImageRows, ImageStream, Slice, StreamingData, TensorImages, cut, is_streamed, open_dataset,
                        stack_images, stream_index)
from .tabular import (CREDIT_DEFAULT_FEATURES, TABULAR_SETS, load_credit_default, load_sklearn_tabular,
                      read_credit_default, tabular_feature_names)


#: the on-disk datasets' index readers (same options as their loaders): what ``open_dataset`` streams
STREAMABLE = {"cifar10": index_cifar10, "gtsrb": index_gtsrb, "cub200": index_cub200,
              "chestxray14": index_chestxray14, "imagefolder": index_imagefolder, "isic": index_isic}


def load_dataset(name: str, **options) -> ImageDataset:
    """Load the dataset registered as ``name``; on-disk formats take ``root=PATH``."""
    return DATASETS.get(name)(**options)


from .spec import DataSpec, load_data, parse_data_spec  # noqa: E402


__all__ = ["CREDIT_DEFAULT_FEATURES", "DATASETS", "DataSpec", "DatasetIndex", "ImageDataset", "ImageFiles",
           "ImageRows", "ImageStream", "PixelArray", "SHAPE_NAMES", "STREAMABLE", "SeededOrder", "Slice", "StreamBatches",
           "StreamingData", "TABULAR_SETS", "TensorImages", "images_from_array", "index_chestxray14",
           "index_cifar10", "index_cub200", "index_gtsrb", "index_imagefolder", "index_isic",
           "load_chestxray14", "load_cifar10", "load_credit_default", "load_cub200", "load_data", "load_dataset",
           "load_gtsrb", "load_imagefolder", "load_isic", "load_mnist5k", "cut", "is_streamed", "stack_images",
           "load_npz", "load_shapes", "load_sklearn_tabular",
           "make_loader", "make_shapes", "open_dataset", "parse_data_spec", "read_credit_default",
           "stratified_split", "stream_index", "tabular_feature_names"]
