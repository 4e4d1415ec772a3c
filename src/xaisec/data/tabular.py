"""``sklearn_tabular``: scikit-learn's bundled tabular sets as flat features in [0,1].

For MLP experiments on tabular data, like the credit-default MLP example of Fang & Choromanska
(AAAI 2022, https://arxiv.org/abs/2011.07429). ``x`` stays 2-D ``(N,F)``: each feature is min-max
scaled with the minimum and maximum of the *train* split only (no test statistics leak into
training); test values outside the train range are clipped to [0,1].
"""
from __future__ import annotations

import difflib

import numpy as np
import torch
from ..errors import DataError
from .base import ImageDataset, stratified_split
from .images import select_subset


def _sklearn_loader(name: str):
    """``sklearn.datasets.<name>``, imported when called: importing scikit-learn takes seconds, which every
    ``xaisec`` command would pay at start-up (the CLI imports this module) even when it loads no tabular set."""
    def load(**options):
        from sklearn import datasets

        return getattr(datasets, name)(**options)
    load.__name__ = name
    return load


TABULAR_SETS = {
    "breast_cancer": _sklearn_loader("load_breast_cancer"),  # 569 x 30, 2 classes
    "wine": _sklearn_loader("load_wine"),  # 178 x 13, 3 classes
    "iris": _sklearn_loader("load_iris"),  # 150 x 4, 3 classes
    "digits": _sklearn_loader("load_digits"),  # 1797 x 64 (8x8 images as flat features), 10 classes
}


def _bunch(name: str):
    if name not in TABULAR_SETS:
        close = difflib.get_close_matches(str(name), TABULAR_SETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(f"unknown scikit-learn tabular set {name!r}.{hint} Known: {', '.join(TABULAR_SETS)}")
    return TABULAR_SETS[name]()


def tabular_feature_names(name: str) -> list[str]:
    """Names of the ``F`` feature columns of the tabular set ``name``."""
    bunch = _bunch(name)
    names = getattr(bunch, "feature_names", None)
    return [str(n) for n in names] if names is not None else [f"f{i}" for i in range(bunch.data.shape[1])]


def minmax_fit_transform(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays scaled by the per-feature min/max of ``train``; constant features map to 0."""
    low, high = train.min(axis=0), train.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return (train - low) / span, np.clip((test - low) / span, 0.0, 1.0)


def load_sklearn_tabular(table: str = "breast_cancer", test_fraction: float = 0.2, seed: int = 0,
                         max_samples: int | None = None, max_per_class: int | None = None) -> ImageDataset:
    """A scikit-learn tabular set as ``x`` float32 ``(N,F)`` in [0,1] and int64 labels.

    ``table``: one of :data:`TABULAR_SETS` (not ``name``: ``load_dataset`` takes that). The split is
    stratified by class (``test_fraction``, ``seed``);
    ``max_samples`` / ``max_per_class`` take a random subset of each split before the scaler is fit.
    """
    bunch = _bunch(table)
    features = np.asarray(bunch.data, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    train, test = stratified_split(labels, test_fraction, seed)
    train = train[select_subset(labels[train], len(train), max_samples, max_per_class, seed)]
    test = test[select_subset(labels[test], len(test), max_samples, max_per_class, seed)]
    x_train, x_test = minmax_fit_transform(features[train], features[test])
    class_names = [str(n) for n in getattr(bunch, "target_names", range(labels.max() + 1))]
    return ImageDataset(f"sklearn_tabular:{table}", torch.from_numpy(x_train.astype(np.float32)),
                        torch.from_numpy(labels[train]), torch.from_numpy(x_test.astype(np.float32)),
                        torch.from_numpy(labels[test]), num_classes=len(class_names), class_names=class_names)
