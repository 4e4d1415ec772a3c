"""Interpreter-ensemble detector: calibration on benign inputs, scores, errors."""
from __future__ import annotations

import pytest
import torch

from xaisec.defenses import DEFENSES, InterpreterEnsembleDetector
from xaisec.errors import ConfigError, XaisecError
from xaisec.explainers import build
from xaisec.maps import MapPostprocess


def _detector(model, **kw):
    members = {"cam": build("cam", model), "gradcam": build("gradcam", model), "simplegrad": build("simplegrad", model)}
    return InterpreterEnsembleDetector(model, members, MapPostprocess(pool=2), **kw)


@pytest.mark.parametrize("metric", ["l1", "iou"])
def test_threshold_is_the_benign_quantile_and_flags_that_fraction(quadrant_model, metric):
    model, x, _ = quadrant_model
    det = _detector(model, metric=metric, fpr=0.1).fit(x)
    scores = det.score(x).double()
    assert det.threshold == pytest.approx(torch.quantile(scores, 0.9).item())
    assert det.detect(x).double().mean().item() == pytest.approx(0.1, abs=1 / len(x) + 1e-9)
    assert det.score(x[:5]).shape == (5,) and (scores >= 0).all()


def test_disagreement_is_zero_for_identical_maps_and_positive_otherwise(quadrant_model):
    model, x, _ = quadrant_model
    det = _detector(model)
    same = {"a": torch.rand(3, 1, 6, 6)}
    same["b"] = same["a"].clone()
    assert det.disagreement(same).abs().max() == 0
    assert det.disagreement({"a": torch.rand(3, 1, 6, 6), "b": torch.rand(3, 1, 6, 6)}).min() > 0
    # cam and gradcam agree (same map up to scale on GAP models); simplegrad disagrees with both
    maps = det.maps(x[:8])
    pair = InterpreterEnsembleDetector(model, {"cam": build("cam", model), "gradcam": build("gradcam", model)},
                                       MapPostprocess(pool=2))
    assert pair.disagreement({k: maps[k] for k in ("cam", "gradcam")}).mean() < det.disagreement(maps).mean()


def test_errors_and_registry(quadrant_model):
    model, x, _ = quadrant_model
    with pytest.raises(ConfigError, match="at least two"):
        InterpreterEnsembleDetector(model, {"cam": build("cam", model)})
    with pytest.raises(ConfigError, match="metric"):
        _detector(model, metric="cosine")
    with pytest.raises(XaisecError, match="not fitted"):
        _detector(model).detect(x)
    assert DEFENSES.get("interpreter_ensemble") is InterpreterEnsembleDetector
