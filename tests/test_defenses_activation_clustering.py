"""Activation clustering vs ART's ActivationDefence on the same activations and random state."""
import numpy as np
import pytest
import torch
from torch import nn

from xaisec.defenses.activation_clustering import (activation_clustering, collect_activations, misclustering,
                                                   overlap_verdict)
from xaisec.errors import XaisecError

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def poisoned(clustered_inputs):
    """3 classes of 80 inputs (1,4,8); ~20% carry a strong shared offset (the 'trigger')."""
    return clustered_inputs(240, 0.2, 8)


def art_defence(model, x, y, seed, **params):
    from art.defences.detector.poison import ActivationDefence
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 4, 8), nb_classes=3)
    defence = ActivationDefence(clf, x.numpy(), np.eye(3)[y.numpy()])
    np.random.seed(seed)
    report, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=10, **params)
    clusters = np.zeros(len(y), int)
    for c in range(3):
        clusters[(y == c).numpy()] = defence.clusters_by_class[c]
    return clf, report, np.array(is_clean), clusters


def test_collect_activations_matches_art(poisoned):
    model, x, y, _ = poisoned
    model.train()
    act = collect_activations(model, "features", x, batch_size=50)
    assert model.training and not model._forward_hooks and not model.features._forward_hooks
    clf, *_ = art_defence(model.eval(), x, y, 0, reduce="PCA", cluster_analysis="smaller")
    ref = clf.get_activations(x.numpy(), layer=len(clf.layer_names) - 1, batch_size=128)
    assert act.shape == (240, 24)
    np.testing.assert_array_equal(act.numpy(), ref.reshape(240, -1))


# (ICA with "relative-size" is left out: ICA splits these classes evenly and ART's relative-size
# report then crashes on an empty poisoned-cluster array.)
@pytest.mark.parametrize("reduce,art_reduce,analysis", [("ica", "FastICA", "smaller"), ("pca", "PCA", "smaller"),
                                                        ("pca", "PCA", "relative-size")])
def test_same_clusters_and_flags_as_art(poisoned, reduce, art_reduce, analysis):
    model, x, y, _ = poisoned
    act = collect_activations(model, "features", x)
    _, _, is_clean, clusters = art_defence(model, x, y, 7, reduce=art_reduce, cluster_analysis=analysis)
    res = activation_clustering(act, y, reduce=reduce, analysis=analysis, random_state=7)
    np.testing.assert_array_equal(res.clusters.numpy(), clusters)
    np.testing.assert_array_equal((~res.is_poison).numpy().astype(int), is_clean)


def test_silhouette_scores_and_poisoned_clusters_match_art(poisoned):
    model, x, y, is_poisoned = poisoned
    act = collect_activations(model, "features", x)
    _, report, is_clean, clusters = art_defence(model, x, y, 3, reduce="PCA", cluster_analysis="silhouette-scores")
    res = activation_clustering(act, y, reduce="pca", analysis="silhouette", random_state=3)
    np.testing.assert_array_equal(res.clusters.numpy(), clusters)
    for info in res.classes:
        assert round(info.silhouette, 4) == float(report[f"class_{info.label}"]["avg_silhouette_score"])
        assert report[f"class_{info.label}"]["suspicious"] == bool(info.poisoned_clusters)
    # ART leaves the clean cluster's flags uninitialised (np.empty) in this branch: compare flagged ones.
    assert (is_clean[res.is_poison.numpy()] == 0).all()
    assert torch.equal(res.is_poison, is_poisoned)


def test_outputs_and_misclustering(poisoned):
    model, x, y, is_poisoned = poisoned
    res = activation_clustering(collect_activations(model, "features", x), y, reduce="pca")
    assert res.suspicion.shape == (240,) and ((res.suspicion >= 0) & (res.suspicion < 1)).all()
    assert (res.suspicion[res.is_poison] > 0.5).all()  # flagged = the small cluster
    assert [sum(c.sizes) for c in res.classes] == [80, 80, 80]
    assert all(c.silhouette > 0.5 for c in res.classes) and set(res.reduced) == {0, 1, 2}
    m = misclustering(res, y, is_poisoned)
    assert m.rate == 0 and m.label_agnostic_rate == 0 and m.verdict == "separable"
    # Random flags: about half the samples land in the wrong cluster.
    res.clusters = torch.randint(0, 2, (240,), generator=torch.Generator().manual_seed(0))
    res.is_poison = res.clusters == 1
    m = misclustering(res, y, is_poisoned)
    assert 0.3 < m.label_agnostic_rate <= 0.5 and m.verdict == "fully overlapping"
    assert m.clean_in_poison_cluster == pytest.approx(float(res.is_poison[~is_poisoned].float().mean()))


def test_verdict_thresholds():
    assert overlap_verdict(0.0) == overlap_verdict(0.049) == "separable"
    assert overlap_verdict(0.05) == overlap_verdict(0.30) == "partially overlapping"
    assert overlap_verdict(0.31) == "fully overlapping"


def test_errors(poisoned):
    model, x, y, _ = poisoned
    act = collect_activations(model, "features", x)
    with pytest.raises(XaisecError, match="reduce"):
        activation_clustering(act, y, reduce="tsne")
    with pytest.raises(XaisecError, match="analysis"):
        activation_clustering(act, y, analysis="biggest")
    with pytest.raises(XaisecError, match=r"\(N, D\)"):
        activation_clustering(act[:, None], y)
    with pytest.raises(XaisecError, match="labels"):
        activation_clustering(act, y[:10])
    with pytest.raises(XaisecError, match="samples"):
        activation_clustering(act[:4], torch.tensor([0, 0, 1, 1]))
    with pytest.raises(XaisecError, match="no layer"):
        collect_activations(model, "feature", x)
