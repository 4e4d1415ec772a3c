"""Multi-label training and evaluation (ChestX-ray14): BCE, AUROC per finding against scikit-learn, targets."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from xaisec.errors import ConfigError, DataError
from xaisec.multilabel import binary_cross_entropy, explained_finding, multilabel_auroc
from xaisec.train import TensorBatches, fit


def test_auroc_per_finding_matches_sklearn():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (60, 5)).astype(np.float32)
    scores = targets * rng.uniform(0, 1, (60, 5)) + rng.normal(0, 0.6, (60, 5))
    scores[:10, 1] = scores[10:20, 1]  # ties are counted half, as sklearn does
    per_class, mean = multilabel_auroc(torch.tensor(scores), torch.tensor(targets))
    expected = [roc_auc_score(targets[:, k], scores[:, k]) for k in range(5)]
    assert np.allclose(per_class.numpy(), expected) and mean == pytest.approx(np.mean(expected))
    assert mean == pytest.approx(roc_auc_score(targets, scores, average="macro"))


def test_auroc_skips_findings_without_both_classes():
    targets = torch.tensor([[1, 0], [0, 0], [1, 0]], dtype=torch.float32)
    per_class, mean = multilabel_auroc(torch.tensor([[0.9, 0.1], [0.2, 0.5], [0.8, 0.3]]), targets)
    assert per_class[0] == 1.0 and per_class[1].isnan() and mean == 1.0
    with pytest.raises(DataError, match="no finding"):
        multilabel_auroc(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(DataError, match="one shape"):
        multilabel_auroc(torch.zeros(3, 2), torch.zeros(3, 3))


def test_bce_training_learns_two_findings():
    torch.manual_seed(0)
    x = torch.rand(128, 4)
    y = torch.stack([x[:, 0] > 0.5, x[:, 1] + x[:, 2] > 1.0], 1).float()
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    history = fit(model, TensorBatches(x, y, batch_size=32), binary_cross_entropy, optimizer, 30, progress=False)
    assert history[-1]["bce"] < history[0]["bce"]
    _, mean = multilabel_auroc(model(x).detach(), y)
    assert mean > 0.95


def test_explained_finding_chosen_or_top_scoring():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    assert explained_finding(logits).tolist() == [1, 0]
    assert explained_finding(logits, "Mass", ["Atelectasis", "Effusion", "Mass"]).tolist() == [2, 2]
    assert explained_finding(logits, 1).tolist() == [1, 1]
    for bad in ("Hernia", 3, True):
        with pytest.raises(ConfigError, match="finding"):
            explained_finding(logits, bad, ["Atelectasis", "Effusion", "Mass"])
