"""TV denoising: Chambolle ROF vs scikit-image, ART TotalVarMin vs ART on the same masks."""
import numpy as np
import pytest
import torch

from xaisec.data import load_dataset
from xaisec.defenses.tv_denoise import denoise_sweep, total_var_min, total_variation, tv_chambolle
from xaisec.errors import XaisecError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("mnist5k").x_test[:12]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).square().mean()))


def test_chambolle_matches_skimage():
    skimage = pytest.importorskip("skimage.restoration")
    x = torch.rand(2, 3, 17, 23, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for weight in (0.05, 0.3):
        out = tv_chambolle(x, weight, n_iter=40)
        for i in range(2):
            ref = skimage.denoise_tv_chambolle(x[i].permute(1, 2, 0).numpy(), weight=weight, eps=0,
                                               max_num_iter=40, channel_axis=-1)
            np.testing.assert_allclose(out[i].permute(1, 2, 0).numpy(), ref, atol=1e-12)


def test_chambolle_reduces_tv_and_noise(digits):
    clean = 0.2 + 0.6 * digits  # mid-range, so clamping the noise adds no bias
    noisy = (clean + 0.1 * torch.randn(digits.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    out = tv_chambolle(noisy, 0.1)
    assert (total_variation(out) < 0.5 * total_variation(noisy)).all()
    assert psnr(out, clean) > psnr(noisy, clean) + 3
    assert out.shape == noisy.shape and out.min() >= 0 and out.max() <= 1


def test_sweep_is_monotone_in_strength(digits):
    sweep = denoise_sweep(digits, [0.0, 0.05, 0.2, 1.0], n_iter=50)
    assert sweep.shape == (4, *digits.shape)
    assert torch.equal(sweep[0], digits)
    tv = total_variation(sweep.flatten(0, 1)).view(4, -1).mean(1)
    assert (tv[1:] < tv[:-1]).all()


def test_chambolle_differentiable():
    x = torch.rand(1, 1, 8, 8, requires_grad=True)
    out = tv_chambolle(x, 0.1, n_iter=10, differentiable=True)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not tv_chambolle(x, 0.1, n_iter=10).requires_grad


def art_run(x: torch.Tensor, seed: int, **params) -> tuple[np.ndarray, torch.Tensor]:
    """ART on channels-last input after np.random.seed(seed), and the mask ART drew."""
    from art.defences.preprocessor import TotalVarMin

    b, c, h, w = x.shape
    np.random.seed(seed)
    ref, _ = TotalVarMin(clip_values=(0.0, 1.0), **params)(x.permute(0, 2, 3, 1).numpy().copy())
    mask = np.random.RandomState(seed).rand(b, h, w, c) < params.get("prob", 0.3)
    return ref, torch.from_numpy(mask).permute(0, 3, 1, 2)


@pytest.mark.parametrize("norm,lamb,prob", [(1, 0.1, 0.3), (1, 0.5, 0.7), (2, 0.25, 0.3), (2, 0.5, 0.3), (2, 1.0, 0.7)])
def test_total_var_min_matches_art(digits, norm, lamb, prob):
    rgb = torch.rand(3, 3, 12, 10, generator=torch.Generator().manual_seed(2))
    for x in (digits, rgb):
        ref, mask = art_run(x, seed=5, prob=prob, norm=norm, lamb=lamb)
        out = total_var_min(x, prob, norm, lamb, mask=mask).permute(0, 2, 3, 1).numpy()
        assert np.abs(ref - x.permute(0, 2, 3, 1).numpy()).max() > 0.05  # ART did change the images
        np.testing.assert_allclose(out, ref, atol=1e-6 if norm == 1 else 5e-6, rtol=0)


def test_total_var_min_defaults_and_checks(digits):
    out = total_var_min(digits[:2], generator=torch.Generator().manual_seed(0))
    assert out.shape == digits[:2].shape and out.dtype == digits.dtype
    assert total_variation(out).sum() < total_variation(digits[:2]).sum()
    with pytest.raises(XaisecError, match="mask has shape"):
        total_var_min(digits[:2], mask=torch.ones(1, 1, 28, 28))
    with pytest.raises(XaisecError, match="norm"):
        total_var_min(digits[:2], norm=0)
    with pytest.raises(XaisecError, match=r"\[0,1\]"):
        tv_chambolle(digits * 2)
    with pytest.raises(XaisecError, match="weight"):
        tv_chambolle(digits, -1.0)
    with pytest.raises(XaisecError, match="at least one"):
        denoise_sweep(digits, [])
