"""Spectral signatures vs ART's SpectralSignatureDefense on the same representations."""
import numpy as np
import pytest
import torch
from torch import nn

from xaisec.defenses.spectral_signatures import spectral_scores, spectral_signatures
from xaisec.errors import XaisecError


@pytest.fixture(scope="module")
def data(clustered_inputs):
    return clustered_inputs(300, 0.1, 4)


@pytest.mark.parametrize("expected,eps", [(0.1, 1.5), (0.33, 1.5), (0.2, 1.0)])
def test_flags_and_scores_match_art(data, expected, eps):
    from art.defences.detector.poison import SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    model, x, y, _ = data
    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 4, 8), nb_classes=3)
    defence = SpectralSignatureDefense(clf, x.numpy(), np.eye(3)[y.numpy()], expected_pp_poison=expected,
                                       eps_multiplier=eps)
    report, is_clean = defence.detect_poison()
    with torch.no_grad():
        reps = model.features(x)
    res = spectral_signatures(reps, y, expected, eps, centered=False)
    np.testing.assert_array_equal((~res.is_poison).numpy().astype(int), np.array(is_clean))
    flagged = res.is_poison.nonzero().squeeze(1).tolist()
    assert sorted(report) == flagged
    # ART scores |R v| in float32; ours are the squares, in float64.
    np.testing.assert_allclose(res.scores[flagged].sqrt().numpy(), [report[i] for i in flagged], rtol=2e-6)
    for c in range(3):
        art_scores = SpectralSignatureDefense.spectral_signature_scores(reps[y == c].numpy())[:, 0]
        np.testing.assert_allclose(res.scores[y == c].sqrt().numpy(), art_scores, rtol=2e-6, atol=1e-6)


def test_centred_scores_find_the_poison(data):
    model, x, y, is_poisoned = data
    with torch.no_grad():
        reps = model.features(x)
    res = spectral_signatures(reps, y, expected_poison_fraction=0.1)
    assert res.is_poison[is_poisoned].float().mean() > 0.9  # recall
    per_class = [int(res.is_poison[y == c].sum()) for c in range(3)]
    assert all(14 <= k <= 16 for k in per_class)  # 1.5 * 10% of 100
    # Algorithm 1: squared projection of the centred representation on the top singular vector.
    r = reps[y == 0].double()
    v = torch.linalg.svd(r - r.mean(0), full_matrices=False).Vh[0]
    torch.testing.assert_close(spectral_scores(reps[y == 0]), ((r - r.mean(0)) @ v) ** 2)


def test_errors(data):
    _, _, y, _ = data
    with pytest.raises(XaisecError, match="expected_poison_fraction"):
        spectral_signatures(torch.randn(300, 5), y, expected_poison_fraction=1.5)
    with pytest.raises(XaisecError, match=r"\(N, D\)"):
        spectral_signatures(torch.randn(300), y)
    with pytest.raises(XaisecError, match="labels"):
        spectral_signatures(torch.randn(300, 5), y.float())
