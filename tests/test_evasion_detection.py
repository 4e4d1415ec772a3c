"""Feature-squeezing calibration for ADV2 (Table 4) and the adaptive attack's hinge term."""
from __future__ import annotations

import pytest
import torch

from xaisec.defenses import BitDepth, FeatureSqueezingDetector, MedianFilter
from xaisec.evasion import PGD, Adv2PGD, InterpreterTerm, patch_maps, random_target_classes
from xaisec.evasion.detection import SqueezingCalibration
from xaisec.explainers import build


@pytest.fixture
def calibration(quadrant_model):
    model, x, _ = quadrant_model
    detector = FeatureSqueezingDetector(model, [BitDepth(2), MedianFilter(3)], fpr=0.1)
    return SqueezingCalibration(detector, x)


def test_per_squeezer_thresholds_flag_the_calibrated_fraction_of_benign_inputs(calibration, quadrant_model):
    model, x, _ = quadrant_model
    assert calibration.names == ["bit_depth_2", "median_3x3"] and calibration.thresholds.shape == (2,)
    for name in calibration.names + ["joint"]:
        assert calibration.benign_rates[name] == pytest.approx(0.1, abs=1 / len(x) + 1e-9)
    assert calibration.rates(x) == calibration.benign_rates


def test_hinge_term_is_zero_below_the_threshold_and_differentiable(calibration, quadrant_model):
    model, x, _ = quadrant_model
    term = calibration.hinge_term(hinge=0.5)
    xg = x[:8].clone().requires_grad_(True)
    values = term(model, xg)
    assert values.shape == (8,) and (values >= 0).all()
    huge = calibration.hinge_term(hinge=1e6)
    assert huge(model, x[:8]).abs().max() == 0
    if values.sum() > 0:
        (g,) = torch.autograd.grad(values.sum(), xg)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_adaptive_adv2_lowers_the_squeezing_gaps(calibration, quadrant_model):
    model, x, y = quadrant_model
    x, y = x[:16], y[:16]
    yt = random_target_classes(y, 4, torch.Generator().manual_seed(0))
    targets = patch_maps(16, (12, 12), 0.25, torch.Generator().manual_seed(1))
    term = lambda: [InterpreterTerm(build("cam", model))]  # noqa: E731
    basic = Adv2PGD(model, term(), eps=0.2, step=0.02, steps=50, warmup=20, c=5.0)(x, yt, target_maps=targets)
    adaptive = Adv2PGD(model, term(), eps=0.2, step=0.02, steps=50, warmup=20, c=5.0,
                       detector=calibration.hinge_term(0.5), detector_weight=1.0)(x, yt, target_maps=targets)
    gaps = lambda xx: calibration.detector.gaps(xx).sum(1).mean()  # noqa: E731
    assert gaps(adaptive) < gaps(basic)
    assert calibration.rates(adaptive)["joint"] < calibration.rates(basic)["joint"]
    # the detector term starts with the interpreter term, after stage 1 reached the target class
    assert (model(adaptive).argmax(1) == yt).float().mean() >= 0.9
    assert (PGD(model, eps=0.2, step=0.02, steps=20)(x, yt) - x).abs().max() <= 0.2 + 1e-6
