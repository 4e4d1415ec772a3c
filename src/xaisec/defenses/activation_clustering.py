"""Activation Clustering (Chen et al. 2018, https://arxiv.org/abs/1811.03728), as in Fang & Choromanska's Table 2.

Per class: reduce the last-hidden-layer activations (FastICA to 10 dims by default, or PCA),
split them with KMeans(2), and flag a cluster as poisoned by one of ART's analyses:

* ``"smaller"``: the smaller cluster (ART ``analyze_by_size``);
* ``"relative-size"``: clusters holding less than ``size_threshold`` (0.35) of the class;
* ``"silhouette"``: relative size and a silhouette score above ``silhouette_threshold`` (0.1).

Same algorithm, defaults and random-number use as ``art.defences.detector.poison.ActivationDefence``:
with ``random_state=s`` the cluster assignments equal ART's after ``np.random.seed(s)``.

Fang's verdict from ground truth, on the label-agnostic misclustering rate (the share of samples
whose cluster disagrees with their clean/poisoned status under the better of the two ways to name
the clusters, as their balanced 320+320 evaluation implies):
``separable`` if < 5%, ``partially overlapping`` if 5%-30%, ``fully overlapping`` if > 30%.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..models import get_layer, model_device
from ..train import eval_mode
from ..validation import check_finite, check_int, check_number
from .registry import DEFENSES

SEPARABLE_BELOW = 0.05
FULL_OVERLAP_ABOVE = 0.30
ANALYSES = ("smaller", "relative-size", "silhouette")


@torch.no_grad()
def collect_activations(model: nn.Module, layer: str | nn.Module, x: torch.Tensor, batch_size: int = 256
                        ) -> torch.Tensor:
    """Output of ``layer`` (a name for :func:`xaisec.models.get_layer`, or the module) for ``x``, flattened: (N, D).

    Runs in eval mode without gradients on the model's device (activations returned on ``x``'s); the model's
    mode is restored and the hook removed.
    """
    module = get_layer(model, layer) if isinstance(layer, str) else layer
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().flatten(1).to(x.device)))
    device = model_device(model)
    try:
        with eval_mode(model), torch.no_grad():
            for xb in x.split(batch_size):
                model(xb.to(device))
    finally:
        handle.remove()
    return torch.cat(captured)


@dataclass
class ClassClusters:
    """Clustering of one class: cluster sizes, silhouette score of the split, flagged clusters."""

    label: int
    sizes: list[int]
    silhouette: float
    poisoned_clusters: list[int]


@dataclass
class ClusteringResult:
    """Per-sample output (N,) and per-class summaries of :func:`activation_clustering`."""

    clusters: torch.Tensor  # (N,) long: cluster index inside the sample's class
    is_poison: torch.Tensor  # (N,) bool: the sample lies in a flagged cluster
    suspicion: torch.Tensor  # (N,) float in [0,1): 1 - share of its class in the sample's cluster
    classes: list[ClassClusters]
    reduced: dict[int, np.ndarray] = field(repr=False)  # class -> (n_c, n_dims) reduced activations


def _reduce(act: np.ndarray, n_dims: int, reduce: str, rng: np.random.RandomState) -> np.ndarray:
    from sklearn.decomposition import PCA, FastICA

    if act.shape[1] <= n_dims:  # ART keeps small activations as they are
        return act
    if reduce == "ica":
        return FastICA(n_components=n_dims, max_iter=1000, tol=0.005, random_state=rng).fit_transform(act)
    return PCA(n_components=n_dims, random_state=rng).fit_transform(act)


def _flag(sizes: np.ndarray, silhouette: float, analysis: str, size_threshold: float,
          silhouette_threshold: float) -> list[int]:
    if analysis == "smaller":
        return [int(np.argmin(sizes))]
    share = np.round(sizes / sizes.sum(), 2)  # ART rounds shares to 2 decimals before comparing
    small = [int(i) for i in np.flatnonzero(share < round(size_threshold, 2))]
    if analysis == "relative-size":
        return small
    return small if round(silhouette, 4) > round(silhouette_threshold, 4) else []


@DEFENSES.register("activation_clustering")
def activation_clustering(activations: torch.Tensor, labels: torch.Tensor, *, n_dims: int = 10,
                          reduce: str = "ica", n_clusters: int = 2, analysis: str = "smaller",
                          size_threshold: float = 0.35, silhouette_threshold: float = 0.1,
                          random_state: int | None = 0) -> ClusteringResult:
    """Cluster activations (N,D) per label (N,) and flag poisoned clusters (see module docstring)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    if reduce not in ("ica", "pca"):
        raise ConfigError(f"reduce must be 'ica' or 'pca', got {reduce!r}")
    if analysis not in ANALYSES:
        raise ConfigError(f"analysis must be one of {ANALYSES}, got {analysis!r}")
    n_clusters, n_dims = check_int(n_clusters, "n_clusters", low=2), check_int(n_dims, "n_dims", low=1)
    size_threshold = check_number(size_threshold, "size_threshold", low=0, high=1)
    silhouette_threshold = check_number(silhouette_threshold, "silhouette_threshold", low=-1, high=1)
    if random_state is not None:
        random_state = check_int(random_state, "random_state", low=0, high=2**32 - 1)
    if isinstance(activations, torch.Tensor):
        check_finite(activations, "activations")
    if analysis != "smaller" and n_clusters != 2:
        raise ConfigError(f"analysis {analysis!r} works with 2 clusters only (ART); use analysis='smaller'")
    if activations.dim() != 2:
        raise DataError(f"activations must be (N, D), got shape {tuple(activations.shape)}; flatten them first")
    labels = torch.as_tensor(labels)
    if labels.shape != (activations.shape[0],) or labels.dtype.is_floating_point:
        raise DataError(f"labels must be integer class indices of shape ({activations.shape[0]},), "
                        f"got {labels.dtype} {tuple(labels.shape)}")
    act = activations.detach().cpu().numpy()
    lab = labels.cpu().numpy()
    # One random stream through all classes in order, as ART draws from numpy's global generator.
    rng = np.random.RandomState(random_state)
    n = len(lab)
    clusters, poison, suspicion = np.zeros(n, np.int64), np.zeros(n, bool), np.zeros(n, np.float64)
    classes, reduced = [], {}
    for label in range(int(lab.max()) + 1):
        idx = np.flatnonzero(lab == label)
        if len(idx) == 0:
            continue
        if len(idx) <= n_clusters:
            raise DataError(f"class {label} has {len(idx)} samples; clustering needs more than {n_clusters}")
        red = _reduce(act[idx], n_dims, reduce, rng)
        assign = KMeans(n_clusters=n_clusters, random_state=rng).fit_predict(red)
        sizes = np.bincount(assign, minlength=n_clusters)
        sil = float(silhouette_score(red, assign)) if 1 < (sizes > 0).sum() < len(idx) else float("nan")
        flagged = _flag(sizes, sil, analysis, size_threshold, silhouette_threshold)
        clusters[idx], poison[idx] = assign, np.isin(assign, flagged)
        suspicion[idx] = 1 - sizes[assign] / len(idx)
        classes.append(ClassClusters(label, sizes.tolist(), sil, flagged))
        reduced[label] = red
    return ClusteringResult(torch.from_numpy(clusters), torch.from_numpy(poison),
                            torch.from_numpy(suspicion).float(), classes, reduced)


def overlap_verdict(rate: float) -> str:
    """Fang's Table 2 categories from a misclustering rate in [0, 1]."""
    if rate < SEPARABLE_BELOW:
        return "separable"
    return "fully overlapping" if rate > FULL_OVERLAP_ABOVE else "partially overlapping"


@dataclass
class Misclustering:
    """Ground-truth evaluation of a clustering (rates in [0,1])."""

    clean_in_poison_cluster: float  # share of clean samples that were flagged
    poison_in_clean_cluster: float  # share of poisoned samples that were not flagged
    rate: float  # mislabelled / all, with the detector's flags
    label_agnostic_rate: float  # mislabelled / all, clusters named the better way in each class
    verdict: str  # overlap_verdict(label_agnostic_rate)


def misclustering(result: ClusteringResult, labels: torch.Tensor, is_poisoned: torch.Tensor) -> Misclustering:
    """Compare flags and clusters with ground-truth poisoned flags (N,) bool."""
    truth = torch.as_tensor(is_poisoned).bool().cpu()
    labels = torch.as_tensor(labels).cpu()
    if truth.shape != result.is_poison.shape or labels.shape != truth.shape:
        raise DataError(f"is_poisoned and labels must have shape {tuple(result.is_poison.shape)}, "
                        f"got {tuple(truth.shape)} and {tuple(labels.shape)}")
    flags = result.is_poison
    n_clean, n_poison = int((~truth).sum()), int(truth.sum())
    wrong = 0
    for label in labels.unique():
        in_class = labels == label
        c, t = result.clusters[in_class], truth[in_class]
        if int(c.max()) <= 1:  # two clusters: "cluster 1 is poisoned" or "cluster 0 is", whichever fits better
            wrong += min(int(((c == 1) != t).sum()), int(((c == 0) != t).sum()))
        else:  # more clusters: each named after its majority
            wrong += sum(min(int(t[c == k].sum()), int((~t[c == k]).sum())) for k in c.unique())
    agnostic = wrong / len(truth)
    return Misclustering(
        clean_in_poison_cluster=float((flags & ~truth).sum()) / max(n_clean, 1),
        poison_in_clean_cluster=float((~flags & truth).sum()) / max(n_poison, 1),
        rate=float((flags != truth).float().mean()),
        label_agnostic_rate=agnostic,
        verdict=overlap_verdict(agnostic),
    )
