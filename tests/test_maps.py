"""Map normalisations, pooling, distances and top-k IoU against hand-computed values."""
from __future__ import annotations

import pytest
import torch

from xaisec.errors import ConfigError, DataError
from xaisec.maps import MapPostprocess, distance, downsample, normalize, ssim, topk_iou, topk_mask


def test_normalisations():
    m = torch.tensor([[[[1.0, 3.0], [5.0, -3.0]]]])
    torch.testing.assert_close(normalize(m, "minmax"), (m + 3) / 8, atol=1e-6, rtol=0)
    torch.testing.assert_close(normalize(m, "max"), m / 5, atol=1e-6, rtol=0)
    z = normalize(m, "zscore")
    assert z.mean().abs() < 1e-6 and (z.pow(2).mean() - 1).abs() < 1e-3
    assert normalize(m, "none") is m
    with pytest.raises(ConfigError, match="minmax"):
        normalize(m, "softmax")


def test_minmax_is_per_map():
    m = torch.stack([torch.arange(4.0).view(1, 2, 2), 10 * torch.arange(4.0).view(1, 2, 2)])
    out = normalize(m)
    torch.testing.assert_close(out[0], out[1])


def test_downsample_and_postprocess():
    m = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(downsample(m, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    post = MapPostprocess(relu=True, pool=2, norm="max")
    torch.testing.assert_close(post(m - 8), torch.tensor([[[[0.0, 0.0], [2.5 / 4.5, 1.0]]]]), atol=1e-6, rtol=0)
    assert post.describe() == "ReLU, then 2x2 average pooling, then division by the max |value|"
    with pytest.raises(ConfigError):
        MapPostprocess(pool=0)
    with pytest.raises(ConfigError, match="larger"):
        downsample(m, 8)


def test_distances():
    a, b = torch.zeros(2, 1, 2, 2), torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    torch.testing.assert_close(distance(a, b, "mse"), torch.full((2,), 7.5))
    torch.testing.assert_close(distance(a, b, "l1"), torch.full((2,), 2.5))
    torch.testing.assert_close(distance(a, b, "l2"), torch.full((2,), 30 ** 0.5 / 2))
    with pytest.raises(DataError):
        distance(a, b[:, :, :1])


def test_ssim_and_dssim():
    x = torch.rand(3, 1, 16, 16)
    torch.testing.assert_close(ssim(x, x), torch.ones(3))
    assert (distance(x, x, "dssim") < 1e-6).all()
    assert (distance(x, 1 - x, "dssim") > 0.4).all()
    small = torch.rand(2, 1, 4, 4)  # window shrinks to fit tiny maps
    assert ssim(small, small).allclose(torch.ones(2))


def test_topk_mask_and_iou():
    a = torch.tensor([[[[4.0, 3.0], [2.0, 1.0]]]])
    b = torch.tensor([[[[4.0, 1.0], [3.0, 2.0]]]])
    assert topk_mask(a, 2).flatten().tolist() == [True, True, False, False]
    assert topk_mask(a, 0.25).sum() == 1
    torch.testing.assert_close(topk_iou(a, b, 2), torch.tensor([1 / 3]))
    torch.testing.assert_close(topk_iou(a, a, 3), torch.tensor([1.0]))
    with pytest.raises(ConfigError, match="top-k"):
        topk_mask(a, 5)
