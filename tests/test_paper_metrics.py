"""Each paper's own metric definitions, on hand-computed inputs: Fang & Choromanska's per-architecture FSR
thresholds, joint FSR and eq. 3 sum; Noppel et al.'s MSE of z-scored maps; ADV2's L1, L2 and top-k IoU."""
from __future__ import annotations

import math

import pytest
import torch

from xaisec.backdoor.evaluate import (PAPER_THRESHOLDS, default_threshold, joint_rates, paper_threshold,
                                      threshold_family)
from xaisec.backdoor.objectives import suppression_loss
from xaisec.backdoor.paper_metrics import noppel_mse, noppel_mse_summary, noppel_standardise, split_test_halves
from xaisec.errors import ConfigError, DataError
from xaisec.evasion.metrics import adv2_iou, adv2_l1, adv2_l2, map_metrics
from xaisec.maps import MapPostprocess


@pytest.mark.parametrize("arch, explainer, attack, value", [
    (None, "gradcam", "targeted", 0.2), ("vgg_small", "vbp", "non-targeted", 0.1),
    ("torchvision:densenet121", "simplegrad", "non-targeted", 0.35),
    ("torchvision:resnet50", "gradcam", "targeted", 0.25), ("resnet20", "simplegrad", "non-targeted", 0.2),
    ("ResNet50", "vbp", "non-targeted", 0.08), ("resnet20", "vbp", "targeted", 0.25),
])
def test_fang_thresholds_depend_on_the_architecture(arch, explainer, attack, value):
    assert paper_threshold(explainer, attack, arch) == value


def test_threshold_family_and_fallback():
    assert threshold_family("timm:resnet18") == "resnet" and threshold_family("mlp") == "vgg"
    assert PAPER_THRESHOLDS["targeted"]["simplegrad"] == 0.25
    assert paper_threshold("gradshap", "targeted", "resnet20") is None
    assert default_threshold("gradshap", "non-targeted", "resnet20") == 0.3
    with pytest.raises(ConfigError, match="attack_type"):
        paper_threshold("gradcam", "untargeted")


def test_joint_fsr_is_the_mean_over_interpreters():
    lp_attack = {"gradcam": torch.tensor([0.1, 0.3]), "vbp": torch.tensor([0.1, 0.2, 0.5, 0.6])}
    lp_keep = {"gradcam": torch.tensor([0.5, 0.5]), "vbp": torch.tensor([0.05, 0.5])}
    rates = joint_rates(lp_attack, lp_keep, {"gradcam": 0.2, "vbp": 0.3})
    assert rates["fsr"] == pytest.approx((0.5 + 0.5) / 2) and rates["cr"] == pytest.approx((1.0 + 0.5) / 2)
    assert set(joint_rates(lp_attack, None, {"gradcam": 0.2, "vbp": 0.3})) == {"fsr"}
    with pytest.raises(ConfigError, match="vbp"):
        joint_rates(lp_attack, None, {"gradcam": 0.2})


def test_eq3_sum_and_mean():
    maps = torch.tensor([[[[0.5, 1.0], [0.2, 0.0]]]])
    mask = torch.tensor([[[[True, True], [False, False]]]])
    assert suppression_loss(maps, mask, "sum").item() == pytest.approx(0.25 + 1.0)
    assert suppression_loss(maps, mask).item() == pytest.approx(1.25 / 2)  # the sum over k = 2 pixels / k
    with pytest.raises(ConfigError, match="reduction"):
        suppression_loss(maps, mask, "max")


def test_noppel_mse_by_hand():
    a = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    b = 1 - a  # z-scores of b are those of a negated: each pixel differs by 2 * 0.5 / sqrt(0.25 + 1e-5)
    assert noppel_mse(a, b).item() == pytest.approx(1 / (0.25 + 1e-5), rel=1e-5)
    assert noppel_mse(a * 7 + 3, a).item() == pytest.approx(0.0, abs=1e-6)  # invariant to scale and shift
    mean, std = noppel_mse_summary(torch.cat([a, a]), torch.cat([b, a]))
    half = 0.5 / (0.25 + 1e-5)  # per-image MSEs (4, 0): mean 2, population std 2
    assert mean == pytest.approx(half, rel=1e-5) and std == pytest.approx(half, rel=1e-5)


def test_noppel_max_over_channels():
    m = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]]]])  # (1,2,1,2): z-scored jointly, then the channel max
    s = 0.5 / math.sqrt(0.25 + 1e-5)
    torch.testing.assert_close(noppel_standardise(m), torch.full((1, 1, 1, 2), s))
    with pytest.raises(DataError, match="differ in shape"):
        noppel_mse(m, m[:, :1])


def test_split_test_halves():
    tune, report = split_test_halves(5)
    assert list(range(5))[tune] == [0, 1] and list(range(5))[report] == [2, 3, 4]
    with pytest.raises(DataError):
        split_test_halves(1)


def test_adv2_distances_by_hand():
    a = torch.tensor([[[[0.0, 2.0], [4.0, 0.0]]]])  # min-max: [[0, .5], [1, 0]]
    b = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    assert adv2_l1(a, b).item() == pytest.approx((0.5 + 1.0) / 4)
    assert adv2_l2(a, b).item() == pytest.approx(math.sqrt(0.25 + 1.0) / 2)
    assert adv2_iou(a, b, 2).item() == pytest.approx(1 / 3)  # {(0,1),(1,0)} vs {(1,0),(1,1)}
    ours = map_metrics(a, b, MapPostprocess(norm="minmax"), ks=(0.5,))
    assert ours["l1"] == pytest.approx(adv2_l1(a, b).item(), rel=1e-6)
    assert ours["l2"] == pytest.approx(adv2_l2(a, b).item(), rel=1e-6)
    assert ours["iou@0.5"] == pytest.approx(1 / 3)
