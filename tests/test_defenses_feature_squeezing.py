"""Feature squeezing: squeezers vs ART/scipy/direct reference, detector threshold and scores."""
import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter
from torch import nn

from xaisec.defenses.feature_squeezing import (BitDepth, FeatureSqueezingDetector, MedianFilter, NonLocalMeans,
                                               build_squeezers, squeeze_consistency_loss)
from xaisec.errors import XaisecError


def images(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_bit_depth_matches_art(bits):
    from art.defences.preprocessor import FeatureSqueezing

    x = torch.cat([images(3, 3, 8, 8), torch.tensor([0.5, 1 / 6, 0.25, 0.75, 0, 1.0]).expand(3, 3, 8, 6)], 3)
    ref, _ = FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=bits)(x.numpy())
    out = BitDepth(bits)(x)
    assert out.dtype == x.dtype
    np.testing.assert_allclose(out.numpy(), ref, atol=4e-8, rtol=0)  # ART returns float64; we keep float32
    assert len(torch.unique(out)) <= 2**bits


def test_bit_depth_straight_through_gradient():
    x = images(2, 1, 4, 4).requires_grad_()
    (grad,) = torch.autograd.grad((BitDepth(2)(x) * 3).sum(), x)
    assert torch.equal(grad, torch.full_like(x, 3.0))


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_median_matches_scipy_and_art(size):
    from art.defences.preprocessor import SpatialSmoothing

    x = images(2, 3, 11, 9)
    x[0, 0, :3, :3] = 0.5  # ties
    xn = x.permute(0, 2, 3, 1).numpy()
    out = MedianFilter(size)(x).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(out, median_filter(xn, size=(1, size, size, 1), mode="reflect"))
    art, _ = SpatialSmoothing(window_size=size, channels_first=False)(xn)
    np.testing.assert_array_equal(out, art)


def test_median_even_window_is_upper_median_anchored_bottom_right():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 1.0  # a 2x2 window contains it at the outputs (1,1), (1,2), (2,1), (2,2)
    x[0, 0, 1, 2] = 1.0  # two bright pixels out of four -> upper median = 1 where both are inside
    out = MedianFilter(2)(x)[0, 0]
    assert out[1, 2] == 1 and out[2, 2] == 1 and out[1, 1] == 0 and out[1, 3] == 0


def reference_nl_means(img: np.ndarray, search: int, patch: int, h: float) -> np.ndarray:
    """Pixel-by-pixel non-local means with mirror padding, straight from the definition."""
    c, hh, ww = img.shape
    rs, rp = search // 2, patch // 2

    def mirror(i, n):
        i = i % (2 * n - 2)
        return 2 * n - 2 - i if i >= n else i

    def px(i, j):
        return img[:, mirror(i, hh), mirror(j, ww)]

    out = np.zeros_like(img)
    for i in range(hh):
        for j in range(ww):
            num, den = np.zeros(c), 0.0
            for dy in range(-rs, rs + 1):
                for dx in range(-rs, rs + 1):
                    d2 = np.mean([(px(i + a, j + b) - px(i + dy + a, j + dx + b)) ** 2
                                  for a in range(-rp, rp + 1) for b in range(-rp, rp + 1)])
                    w = np.exp(-d2 / h**2)
                    num, den = num + w * px(i + dy, j + dx), den + w
            out[:, i, j] = num / den
    return out


def test_nl_means_matches_direct_reference():
    x = images(2, 2, 7, 6, dtype=torch.float64)
    out = NonLocalMeans(search=5, patch=3, h=0.2)(x)
    for i in range(2):
        np.testing.assert_allclose(out[i].numpy(), reference_nl_means(x[i].numpy(), 5, 3, 0.2), atol=1e-12)


def test_nl_means_denoises_like_skimage():
    restoration = pytest.importorskip("skimage.restoration")
    g = torch.Generator().manual_seed(3)
    clean = torch.kron(torch.rand(4, 4, generator=g), torch.ones(6, 6))[None, None] * 0.6 + 0.2
    noisy = (clean + 0.08 * torch.randn(clean.shape, generator=g)).clamp(0, 1).double()
    ours = NonLocalMeans(search=11, patch=5, h=0.08)(noisy)[0, 0].numpy()
    theirs = restoration.denoise_nl_means(noisy[0, 0].numpy(), patch_size=5, patch_distance=5, h=0.08)
    err = lambda a: np.abs(a - clean[0, 0].numpy()).mean()  # noqa: E731
    assert err(ours) < 0.6 * err(noisy[0, 0].numpy()) and err(theirs) < 0.6 * err(noisy[0, 0].numpy())
    assert np.abs(ours - theirs).mean() < 0.02  # same algorithm up to skimage's fast-mode approximations


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 64, 5))

    def forward(self, x):
        return self.body(x) * 4


def test_detector_scores_threshold_and_detect():
    model = Tiny().train()
    squeezers = [BitDepth(2), MedianFilter(2), NonLocalMeans(3, 3, 0.1)]
    det = FeatureSqueezingDetector(model, squeezers, batch_size=7)
    x = images(40, 1, 8, 8)
    scores = det.score(x)
    with torch.no_grad():
        p = model.eval()(x).softmax(1)
        manual = torch.stack([(p - model(s(x)).softmax(1)).abs().sum(1) for s in squeezers], 1).amax(1)
    model.train()
    torch.testing.assert_close(scores, manual)
    assert scores.shape == (40,) and (scores >= 0).all() and (scores <= 2).all()
    det.fit(x)
    assert det.threshold == pytest.approx(float(np.percentile(scores.numpy(), 95)), rel=1e-6)
    flags = det.detect(x)
    assert flags.dtype == torch.bool and int(flags.sum()) == 2  # 5% of 40 lie above the 95th percentile
    assert model.training  # mode restored


def test_consistency_loss_is_differentiable_and_attackable():
    model = Tiny().eval()
    squeezers = [BitDepth(3), MedianFilter(2)]
    x = images(6, 1, 8, 8).requires_grad_()
    loss = squeeze_consistency_loss(model, x, squeezers)
    assert loss.shape == (6,)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    x_adv = x.detach()
    for _ in range(20):  # an adaptive attacker lowers the squeezing gap by gradient descent
        x_adv.requires_grad_()
        (g,) = torch.autograd.grad(squeeze_consistency_loss(model, x_adv, squeezers).sum(), x_adv)
        x_adv = (x_adv - 0.01 * g.sign()).clamp(0, 1).detach()
    assert squeeze_consistency_loss(model, x_adv, squeezers).sum() < 0.8 * loss.sum().detach()


def test_presets_and_errors():
    assert len(build_squeezers(None)) == 4 and len(build_squeezers("mnist")) == 3
    assert build_squeezers([("bit_depth", {"bits": 4}), "median"])[0] == BitDepth(4)
    det = FeatureSqueezingDetector(Tiny(), "mnist")
    with pytest.raises(XaisecError, match="not fitted"):
        det.detect(images(2, 1, 8, 8))
    with pytest.raises(XaisecError, match=r"\[0,1\]"):
        det.score(images(2, 1, 8, 8) + 1)
    with pytest.raises(XaisecError, match="unknown squeezer"):
        build_squeezers(["median_blur"])
    with pytest.raises(XaisecError, match="bit depth"):
        BitDepth(0)
    with pytest.raises(XaisecError, match="odd"):
        NonLocalMeans(search=4)
    with pytest.raises(XaisecError, match="fpr"):
        FeatureSqueezingDetector(Tiny(), fpr=1.5)
