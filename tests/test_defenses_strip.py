"""STRIP separates patch-triggered inputs from clean ones on a small backdoored MNIST model."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xaisec.data import load_dataset
from xaisec.defenses.strip import STRIPDetector
from xaisec.errors import XaisecError
from xaisec.models import build_model


def add_trigger(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[..., -6:-1, -6:-1] = 1.0  # 5x5 white patch near the bottom-right corner
    return x


@pytest.fixture(scope="module")
def backdoored():
    """An MLP trained 300 steps on mnist5k, 1/8 of each batch triggered and relabelled to class 0."""
    torch.manual_seed(0)
    data = load_dataset("mnist5k")
    model = build_model("mlp", (1, 28, 28), 10, hidden=(64,))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(len(data.x_train), (128,), generator=g)
        xb, yb = data.x_train[idx].clone(), data.y_train[idx].clone()
        xb[-16:], yb[-16:] = add_trigger(xb[-16:]), 0
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        asr = (model(add_trigger(data.x_test[data.y_test != 0])).argmax(1) == 0).float().mean()
    assert asr > 0.9
    return model, data


def auroc(neg: torch.Tensor, pos: torch.Tensor) -> float:
    return float((pos[:, None] > neg[None, :]).float().mean() + 0.5 * (pos[:, None] == neg[None, :]).float().mean())


@pytest.mark.parametrize("blend,min_auc,min_tpr", [("alpha", 0.9, 0.3), ("add", 0.97, 0.8)])
def test_strip_separates_triggered_inputs(backdoored, blend, min_auc, min_tpr):
    model, data = backdoored
    det = STRIPDetector(model, n=16, blend=blend, batch_size=500).fit(data.x_train[:200])
    clean, triggered = data.x_test[:100], add_trigger(data.x_test[100:200])
    s_clean, s_trig = det.score(clean), det.score(triggered)
    assert s_clean.shape == (100,) and (s_clean <= 0).all()  # minus an entropy
    assert auroc(s_clean, s_trig) > min_auc
    assert det.detect(triggered).float().mean() > min_tpr
    assert det.detect(clean).float().mean() < 0.1


def test_threshold_is_the_frr_quantile_and_scoring_is_batched(backdoored):
    model, data = backdoored
    pool, holdout = data.x_train[:50], data.x_train[50:250]
    det = STRIPDetector(model, n=8, frr=0.05, batch_size=37).fit(pool, holdout)
    scores = det.score(holdout)
    assert det.threshold == pytest.approx(float(np.quantile(scores.numpy().astype(np.float64), 0.95)), rel=1e-5)
    assert int(det.detect(holdout).sum()) == 10  # 5% of 200 rejected
    # Chunking the B * n blends does not change the numbers.
    big = STRIPDetector(model, n=8, frr=0.05, batch_size=4096).fit(pool, holdout)
    torch.testing.assert_close(big.score(holdout), scores)
    # mean_entropy (the paper's average of per-blend entropies) is <= the entropy of the mean prediction.
    paper = STRIPDetector(model, n=8, mode="mean_entropy").fit(pool)
    assert (paper.score(holdout[:20]) >= STRIPDetector(model, n=8).fit(pool).score(holdout[:20]) - 1e-5).all()


def test_errors(backdoored):
    model, data = backdoored
    det = STRIPDetector(model, n=4)
    with pytest.raises(XaisecError, match="not fitted"):
        det.score(data.x_test[:2])
    det.fit(data.x_train[:20])
    with pytest.raises(XaisecError, match="image shape"):
        det.score(torch.rand(2, 3, 28, 28))
    with pytest.raises(XaisecError, match="alpha"):
        STRIPDetector(model, alpha=1.0)
    with pytest.raises(XaisecError, match="blend"):
        STRIPDetector(model, blend="max")
