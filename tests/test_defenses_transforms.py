"""Trigger-agnostic transforms: shapes, ranges, JPEG-like compression against PIL, shift alignment."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from xaisec.defenses.transforms import TRANSFORM_NAMES, build_transform, gaussian_blur, jpeg_like, shift
from xaisec.errors import XaisecError


@pytest.mark.parametrize("name", TRANSFORM_NAMES)
def test_shape_range_and_determinism(name):
    x = torch.rand(3, 3, 20, 17)
    t = build_transform(name)
    a, b = t.apply(x, torch.Generator().manual_seed(1)), t.apply(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1 and torch.equal(a, b)
    assert t.align(a).shape == x.shape


def test_jpeg_like_matches_pil_grayscale():
    rng = np.random.default_rng(0)
    smooth = torch.nn.functional.avg_pool2d(torch.from_numpy(rng.random((1, 1, 40, 40))).float(), 3, 1, 1)
    img = (smooth[0, 0].numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="JPEG", quality=50)
    pil = torch.from_numpy(np.asarray(Image.open(buf), dtype=np.float32) / 255)
    ours = jpeg_like(torch.from_numpy(img.astype(np.float32) / 255)[None, None], quality=50)[0, 0]
    err_ours = (ours - pil).abs().mean()
    err_jpeg = (pil - torch.from_numpy(img.astype(np.float32) / 255)).abs().mean()
    assert err_ours < 0.25 * err_jpeg and err_ours < 2 / 255
    assert (jpeg_like(smooth, 100) - smooth).abs().max() < 0.02


def test_shift_and_blur():
    x = torch.rand(2, 1, 10, 10)
    y = shift(x, 2, 1)
    torch.testing.assert_close(y[..., 2:, 1:], x[..., :-2, :-1])
    torch.testing.assert_close(shift(y, -2, -1)[..., :-2, :-1], x[..., :-2, :-1])
    const = torch.full((1, 2, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(const, 1.0), const)
    with pytest.raises(XaisecError):
        shift(x, 10, 0)
    with pytest.raises(XaisecError, match="unknown transform"):
        build_transform("rotate")
