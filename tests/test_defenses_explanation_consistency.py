"""Explanation-consistency: ranks/AUROC against scipy/sklearn, hand-made calibration, real explainer passes."""
from __future__ import annotations

import pytest
import torch
from scipy.stats import rankdata, spearmanr
from sklearn.metrics import roc_auc_score

from xaisec.defenses.explanation_consistency import (ExplanationConsistency, auroc, average_ranks, map_agreement,
                                                     spearman)
from xaisec.errors import XaisecError


def test_average_ranks_and_spearman_match_scipy_with_ties():
    v = torch.randint(0, 5, (4, 30)).float()
    torch.testing.assert_close(average_ranks(v), torch.from_numpy(rankdata(v.numpy(), axis=1)).double())
    a, b = torch.randint(0, 4, (3, 1, 6, 6)).float(), torch.rand(3, 1, 6, 6)
    expected = torch.tensor([spearmanr(a[i].flatten(), b[i].flatten()).statistic for i in range(3)]).float()
    torch.testing.assert_close(spearman(a, b), expected, rtol=1e-5, atol=1e-6)
    assert spearman(torch.zeros(1, 1, 3, 3), torch.rand(1, 1, 3, 3)).item() == 0  # constant map: no ranking


def test_agreement_hand_made():
    m = torch.arange(16.0).view(1, 1, 4, 4)
    assert map_agreement(m, m).item() == pytest.approx(1)
    assert map_agreement(m, -m).item() == pytest.approx(-1)
    assert map_agreement(m, m, "iou", k=0.25).item() == 1
    assert map_agreement(m, m.flip(-1).flip(-2), "iou", k=0.25).item() == 0
    with pytest.raises(XaisecError, match="unknown map agreement"):
        map_agreement(m, m, "cosine")


def test_auroc_hand_made_and_against_sklearn():
    assert auroc(torch.tensor([0.0, 1, 2]), torch.tensor([3.0, 4])) == 1.0
    assert auroc(torch.tensor([3.0, 4]), torch.tensor([0.0, 1, 2])) == 0.0
    assert auroc(torch.ones(5), torch.ones(4)) == 0.5
    neg, pos = torch.randint(0, 6, (40,)).float(), torch.randint(2, 8, (25,)).float()
    expected = roc_auc_score([0] * 40 + [1] * 25, torch.cat([neg, pos]).numpy())
    assert auroc(neg, pos) == pytest.approx(expected)


class _HandMade(ExplanationConsistency):
    """Components given by hand, to test the calibration arithmetic alone."""

    def __init__(self, table):
        super().__init__(torch.nn.Identity(), methods=("a", "b"), transforms=("noise",))
        self.table = table

    def details(self, x):
        return {k: v[x[:, 0, 0, 0].long()] for k, v in self.table.items()}


def test_calibration_hand_made():
    n = 100
    dis = torch.cat([torch.linspace(0, 1, n), torch.full((10,), 5.0)])  # 10 "triggered" inputs disagree
    inst = torch.cat([torch.linspace(0, 2, n), torch.linspace(0, 2, 10)])  # instability says nothing here
    det = _HandMade({"disagreement": dis, "instability": inst})
    index = torch.arange(n + 10).float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    clean, trig = index[:n], index[n:]
    det.fit(clean, fpr=0.1)
    cal = det.calibration
    assert cal.center["disagreement"] == pytest.approx(float(dis[:n].median()))
    assert cal.scale["instability"] == pytest.approx(1.4826 * float((inst[:n] - inst[:n].median()).abs().median()))
    assert det.detect(clean).float().mean().item() == pytest.approx(0.1, abs=0.02)
    assert det.detect(trig).all()
    ev = det.evaluate(clean, trig)
    assert ev["auroc/disagreement"] == 1.0 and ev["auroc/combined"] == 1.0
    assert 0.3 < ev["auroc/instability"] < 0.7 and ev["detection_rate"] == 1.0
    # combine: the calibrated z-scores of already computed details, over any subset of the components
    scores = det.details(trig)
    z = (scores["disagreement"] - cal.center["disagreement"]) / cal.scale["disagreement"]
    torch.testing.assert_close(det.combine(scores, ["disagreement"]), z)
    torch.testing.assert_close(det.combine({k: -v for k, v in scores.items()}, ["disagreement"], two_sided=True),
                               (-scores["disagreement"] - cal.center["disagreement"]).abs() / cal.scale["disagreement"])
    torch.testing.assert_close(det.combine(scores), det.score(trig))
    with pytest.raises(XaisecError, match="components"):
        det.combine(scores, ["reference"])
    # unusually consistent inputs: invisible one-sided, caught two-sided
    low = {"disagreement": torch.cat([dis[:n], torch.full((10,), -5.0)]), "instability": inst}
    assert _HandMade(low).fit(clean, fpr=0.1).evaluate(clean, trig)["auroc/combined"] <= 0.55
    two = _HandMade(low)
    two.two_sided = True
    assert two.fit(clean, fpr=0.1).evaluate(clean, trig)["auroc/combined"] == 1.0


def test_real_pass_shapes_and_self_reference_is_zero(small_mnist, tiny_model):
    model = tiny_model(False)
    x = small_mnist[2][:12]
    det = ExplanationConsistency(model, methods=("gradcam", "simplegrad", "vbp"), reference=tiny_model(False),
                                 batch_size=5)
    d = det.details(x)
    assert {"disagreement", "instability", "reference", "disagreement/gradcam-simplegrad",
            "instability/shift/vbp", "reference/gradcam"} <= set(d)
    assert all(v.shape == (12,) and torch.isfinite(v).all() for v in d.values())
    assert d["reference"].abs().max() < 1e-5  # the same weights explain the same way
    assert (d["disagreement"] > 0).all() and (d["instability"] >= 0).all()
    batched = ExplanationConsistency(model, batch_size=12).details(x)["instability/blur/simplegrad"]
    torch.testing.assert_close(d["instability/blur/simplegrad"], batched, rtol=1e-4, atol=1e-5)
    with pytest.raises(XaisecError, match="fit"):
        det.score(x)
    assert not model.training
