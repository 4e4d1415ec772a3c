"""Tabular data as flat features in [0,1]: scikit-learn's bundled sets and the UCI credit-default file.

For MLP experiments on tabular data, like the credit-default MLP example of Fang & Choromanska
(AAAI 2022, https://arxiv.org/abs/2011.07429, Fig. 1b). ``x`` stays 2-D ``(N,F)``: each feature is min-max
scaled with the minimum and maximum of the *train* split only (no test statistics leak into
training); test values outside the train range are clipped to [0,1].

- ``sklearn_tabular``: ``breast_cancer``, ``wine``, ``iris``, ``digits`` (embedded, nothing to download).
- ``credit_default``: the UCI "default of credit card clients" table (Yeh & Lien 2009) as published, the ``.xls``
  (needs the ``xlrd`` package) or its CSV export: an optional first row ``X1..X23, Y``, then the header
  ``ID, LIMIT_BAL, SEX, EDUCATION, MARRIAGE, AGE, PAY_0, PAY_2..PAY_6, BILL_AMT1..6, PAY_AMT1..6,
  default payment next month`` and one row per client. ``ID`` is dropped; the label is the last column.
"""
from __future__ import annotations

import csv
import difflib
from pathlib import Path

import numpy as np
import torch
from ..errors import DataError
from .base import DATASETS, ImageDataset, stratified_split
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


@DATASETS.register("sklearn_tabular")
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
    class_names = [str(n) for n in getattr(bunch, "target_names", range(labels.max() + 1))]
    return _scaled_dataset(f"sklearn_tabular:{table}", features, labels, class_names, test_fraction, seed,
                           max_samples, max_per_class)


#: the 23 explanatory columns of the UCI credit-default table, in file order
CREDIT_DEFAULT_FEATURES = (
    "LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE", "PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6",
    *(f"BILL_AMT{i}" for i in range(1, 7)), *(f"PAY_AMT{i}" for i in range(1, 7)))
CREDIT_DEFAULT_LABEL = "default payment next month"


def _credit_rows(path: Path) -> list[list[str]]:
    if path.suffix.lower() in (".xls", ".xlsx"):
        try:
            import pandas as pd

            table = pd.read_excel(path, header=None, dtype=str)
        except ImportError as exc:
            raise DataError(f"reading {path.name} needs pandas and xlrd (pip install pandas xlrd), or export the "
                            "sheet to CSV and pass that file") from exc
        return [["" if v is None or v != v else str(v) for v in row] for row in table.itertuples(index=False)]
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [row for row in csv.reader(f) if any(cell.strip() for cell in row)]


def read_credit_default(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Raw features ``(N,23)`` float64 (columns :data:`CREDIT_DEFAULT_FEATURES`) and 0/1 labels ``(N,)`` of
    the UCI credit-default file at ``path`` (``.xls`` or CSV, published layout)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"credit-default file {str(path)!r} does not exist; download 'default of credit card "
                        "clients.xls' from the UCI repository and pass its path (or its CSV export) as root=PATH")
    rows = _credit_rows(path)
    header_at = next((i for i, row in enumerate(rows[:5]) if "LIMIT_BAL" in [c.strip() for c in row]), None)
    if header_at is None:
        raise DataError(f"{path.name} has no header row with LIMIT_BAL in its first 5 rows; expected the UCI "
                        f"layout ID, {', '.join(CREDIT_DEFAULT_FEATURES[:3])}, ..., {CREDIT_DEFAULT_LABEL}")
    header = [c.strip() for c in rows[header_at]]
    missing = [c for c in ("ID", *CREDIT_DEFAULT_FEATURES) if c not in header]
    label_col = next((i for i, c in enumerate(header) if c.lower() in (CREDIT_DEFAULT_LABEL, "y")), None)
    if missing or label_col is None:
        raise DataError(f"{path.name}: header lacks {missing or [CREDIT_DEFAULT_LABEL]}; expected the UCI layout")
    cols = [header.index(c) for c in CREDIT_DEFAULT_FEATURES]
    body = rows[header_at + 1:]
    try:
        table = np.array([[float(row[c]) for c in (*cols, label_col)] for row in body], dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise DataError(f"{path.name}: a data row is not numeric or is too short ({exc})") from exc
    if len(table) == 0:
        raise DataError(f"{path.name} has a header but no data rows")
    labels = table[:, -1]
    if not np.isin(labels, (0, 1)).all():
        raise DataError(f"{path.name}: the label column {CREDIT_DEFAULT_LABEL!r} must hold 0/1")
    return table[:, :-1], labels.astype(np.int64)


@DATASETS.register("credit_default")
def load_credit_default(root: str | Path, test_fraction: float = 0.2, seed: int = 0,
                        max_samples: int | None = None, max_per_class: int | None = None) -> ImageDataset:
    """The UCI credit-default table at ``root`` (a file) as ``x`` float32 ``(N,23)`` in [0,1] (train-split
    min-max) and labels 1 = default. Split and subsets as :func:`load_sklearn_tabular`.

    After scaling, ``EDUCATION`` = 1 is its largest code (5/6, "unknown") and ``MARRIAGE`` = 0 its smallest (0,
    undocumented): the values of Fang & Choromanska's trigger ("education and marital status set to unknown").
    """
    features, labels = read_credit_default(root)
    return _scaled_dataset("credit_default", features, labels, ["no default", "default"], test_fraction, seed,
                           max_samples, max_per_class)


def _scaled_dataset(name: str, features: np.ndarray, labels: np.ndarray, class_names: list[str],
                    test_fraction: float, seed: int, max_samples: int | None,
                    max_per_class: int | None) -> ImageDataset:
    train, test = stratified_split(labels, test_fraction, seed)
    train = train[select_subset(labels[train], len(train), max_samples, max_per_class, seed)]
    test = test[select_subset(labels[test], len(test), max_samples, max_per_class, seed)]
    x_train, x_test = minmax_fit_transform(features[train], features[test])
    return ImageDataset(name, torch.from_numpy(x_train.astype(np.float32)), torch.from_numpy(labels[train]),
                        torch.from_numpy(x_test.astype(np.float32)), torch.from_numpy(labels[test]),
                        num_classes=len(class_names), class_names=class_names)
