"""Tests of xaisec.triggers: registry, shape/range/dtype invariants, determinism, locality, pilgram cross-check."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xaisec.errors import ConfigError, DataError, XaisecError
from xaisec.triggers import TRIGGERS, Moire, Nashville, Patch, Trigger, build_trigger

ALL = ["blend", "image", "moire", "nashville", "patch", "pixel", "rectangle"]
LOCAL = ["patch", "rectangle", "pixel", "image"]
SEEDED = ["blend", "moire"]


def make(name: str, **options) -> Trigger:
    """Build a trigger; ``image`` gets a small RGB tensor picture with a round mask."""
    if name == "image" and "image" not in options:
        g = torch.Generator().manual_seed(3)
        yy, xx = torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij")
        options = {"image": torch.rand(3, 5, 5, generator=g), "mask": ((yy - 2) ** 2 + (xx - 2) ** 2 <= 4).float(),
                   **options}
    return build_trigger(name, **options)


def images(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    # away from 0 and 1 so that any constant colour written by a trigger changes the pixel
    return (0.02 + 0.96 * torch.rand(*shape, generator=torch.Generator().manual_seed(seed))).to(dtype)


SHAPES = [(4, 1, 28, 28), (3, 3, 32, 32), (2, 3, 20, 37)]


# ----------------------------------------------------------------------------------------------------- registry
def test_registry_round_trip():
    assert TRIGGERS.names() == sorted(ALL + ["features"])  # features: tabular, tested in test_backdoor_tabular.py
    for name in ALL:
        trigger = make(name)
        assert isinstance(trigger, TRIGGERS.get(name)) and isinstance(trigger, Trigger)
        assert trigger.name == name
        assert build_trigger(trigger) is trigger
        assert name in trigger.describe() and name in repr(trigger)
    custom = torch.nn.Identity()
    assert build_trigger(custom) is custom


def test_registry_errors():
    with pytest.raises(XaisecError, match="nashville"):
        build_trigger("nashvile")
    with pytest.raises(ConfigError, match="no option .sise.. Did you mean .size.. Its options: size, position, colour, margin"):
        build_trigger("patch", sise=3)
    with pytest.raises(ConfigError, match="needs option"):
        build_trigger("image")
    with pytest.raises(ConfigError, match="only apply"):
        build_trigger(Patch(), size=3)
    with pytest.raises(ConfigError):
        build_trigger(3)


# --------------------------------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", SHAPES)
def test_shape_dtype_range_and_mask(name, shape):
    trigger = make(name)
    for dtype in (torch.float32, torch.float64):
        x = images(shape, dtype=dtype)
        y = trigger(x)
        assert y.shape == x.shape and y.dtype == dtype
        assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
        assert not torch.equal(y, x), "the trigger changed nothing"
    mask = trigger.mask(shape)
    assert mask.shape == (1, 1, *shape[-2:]) and mask.dtype == torch.bool
    if name in LOCAL:
        assert 0 < mask.sum() < mask.numel() / 4
    else:
        assert mask.all()


@pytest.mark.parametrize("name", ALL)
def test_batched_equals_per_image_and_input_untouched(name):
    trigger = make(name)
    x = images((5, 3, 24, 24), seed=1)
    x_copy = x.clone()
    batched = trigger(x)
    single = torch.cat([trigger(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-6)
    assert torch.equal(x, x_copy)


@pytest.mark.parametrize("name", ALL)
def test_deterministic(name):
    x = images((2, 3, 32, 32))
    torch.testing.assert_close(make(name)(x), make(name)(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", SEEDED)
def test_seed_changes_pattern(name):
    x = images((2, 3, 32, 32))
    y0, y0_again, y1 = make(name, seed=0)(x), make(name, seed=0)(x), make(name, seed=1)(x)
    assert torch.equal(y0, y0_again)
    assert (y0 - y1).abs().mean() > 0.01


@pytest.mark.parametrize("name", ALL)
def test_differentiable_in_input(name):
    x = images((2, 3, 16, 16), dtype=torch.float64).requires_grad_(True)
    y = make(name)(x)
    (grad,) = torch.autograd.grad((y * torch.linspace(0.1, 1, y.numel()).view_as(y)).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["blend", "moire", "image"])
def test_gradcheck_affine_triggers(name):
    x = images((1, 3, 8, 8), dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(make(name), (x,))


# ------------------------------------------------------------------------------------------------------ locality
@pytest.mark.parametrize("name", LOCAL)
@pytest.mark.parametrize("shape", SHAPES)
def test_local_triggers_touch_exactly_their_mask(name, shape):
    trigger = make(name)
    x = images(shape, seed=2).requires_grad_(True)
    y = trigger(x)
    mask = trigger.mask(shape).expand_as(x)
    changed = (y != x).any(1, keepdim=True).expand_as(x)
    assert torch.equal(changed, mask)
    assert torch.equal(y[~mask], x[~mask])
    (grad,) = torch.autograd.grad(y.sum(), x)
    if name != "image":  # opaque: the input inside the region does not matter
        assert torch.equal(grad, (~mask).to(grad.dtype))


def test_patch_geometry_and_colour():
    x = images((2, 3, 10, 12))
    y = Patch(size=3, position="bottom_right", colour=(1.0, 0.0, 0.5))(x)
    assert torch.equal(y[:, :, 7:, 9:], torch.tensor([1.0, 0.0, 0.5]).view(1, 3, 1, 1).expand(2, 3, 3, 3))
    assert Patch(size=2, position="top_left", margin=1).mask((10, 12))[0, 0, 1:3, 1:3].all()
    mask = Patch(size=(2, 4), position=(5, 6)).mask((10, 12))[0, 0]
    assert mask.sum() == 8 and mask[5:7, 6:10].all()
    assert Patch(size=0.5, position="center").mask((10, 12))[0, 0].sum() == 5 * 6
    gray = Patch(colour=(1.0, 0.0, 0.0))(images((1, 1, 8, 8)))  # RGB colour on gray: its luma
    assert torch.allclose(gray[0, 0, -1, -1], torch.tensor(0.299))
    rect = build_trigger("rectangle")(x)
    assert (rect[:, :, 4:5, 4:7] == 0).all()  # 1/8 x 1/4 of 10x12, centred, black


def test_pixel_trigger():
    trigger = build_trigger("pixel", pixels=[(0, 0), (-1, -2)], value=0.0)
    x = images((3, 1, 6, 7))
    y = trigger(x)
    assert trigger.mask(x.shape).sum() == 2 and y[:, 0, 0, 0].eq(0).all() and y[:, 0, 5, 5].eq(0).all()
    assert build_trigger("pixel", pixels=(2, 3)).mask((6, 7))[0, 0, 2, 3]


# --------------------------------------------------------------------------------------------------- nashville
def _pilgram(images_uint8: np.ndarray) -> np.ndarray:
    import pilgram

    return np.stack([np.asarray(pilgram.nashville(Image.fromarray(a))) for a in images_uint8])


def _structured_uint8() -> np.ndarray:
    ramp = np.linspace(0, 255, 48)
    yy, xx = np.meshgrid(ramp, ramp, indexing="ij")
    gradient = np.stack([xx, yy, 255 - xx], -1)
    checker = ((np.indices((48, 48)).sum(0) // 6) % 2 * 255)[..., None].repeat(3, -1)
    levels = np.arange(0, 256, 5)  # a 52^3 lattice of the colour cube, as 52 images of 52x52
    cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1)
    out = [gradient, checker, np.full((48, 48, 3), (250, 10, 128))]
    return np.concatenate([np.stack(out), cube[:, :48, :48]]).round().astype(np.uint8)


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_nashville_matches_pilgram(kind):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (6, 33, 47, 3), dtype=np.uint8) if kind == "random" else _structured_uint8()
    ref = _to_tensor(_pilgram(a))
    exact = (Nashville()(_to_tensor(a)) - ref).abs().max().item()
    smooth = (Nashville(quantize=False)(_to_tensor(a)) - ref).abs().max().item()
    assert exact <= 2 / 255, exact * 255
    assert exact <= 1e-4  # in fact the 8-bit emulation is exact
    assert smooth <= 4 / 255, smooth * 255


def test_nashville_gray_matches_pilgram_luma():
    import pilgram

    a = np.random.default_rng(1).integers(0, 256, (2, 20, 30), dtype=np.uint8)
    a[0, 0] = np.linspace(0, 255, 30).round()
    ref = np.stack([np.asarray(pilgram.nashville(Image.fromarray(g, "L")).convert("L")) for g in a])
    ref = torch.from_numpy(ref)[:, None].float() / 255
    y = Nashville()(torch.from_numpy(a)[:, None].float() / 255)
    assert y.shape == (2, 1, 20, 30)
    assert (y - ref).abs().max() <= 2 / 255


# ------------------------------------------------------------------------------------------------------- moire
def test_moire_visible_bounded_and_shared_across_batch():
    trigger = Moire(opacity=0.3)
    x = torch.stack([torch.full((3, 40, 40), v) for v in (0.3, 0.6, 0.9)])
    y = trigger(x)
    change = (y - x).abs()
    assert change.amax((1, 2, 3)).min() > 0.1  # visible lines on every image
    assert 0.02 < change.mean() < 0.3 * 2  # at most the two families' opacity
    coverage = (x - y) / x  # black lines: x' = (1 - A) x, so A is the same for every image
    torch.testing.assert_close(coverage[0], coverage[1])
    torch.testing.assert_close(coverage[0], coverage[2])
    assert torch.equal(trigger.alpha(40, 40), trigger.alpha(40, 40))
    white = Moire(darkness=0.0)(x)
    assert (white >= x).all()


def test_moire_options_change_the_pattern():
    x = torch.full((1, 1, 32, 32), 0.5)
    base = Moire()(x)
    for options in ({"period": 4.0}, {"angle": 10.0}, {"warp": 0.0}, {"angle_delta": 20.0}):
        assert (Moire(**options)(x) - base).abs().mean() > 0.01, options
    assert torch.equal(Moire(opacity=0.0)(x), x)


# ------------------------------------------------------------------------------------------------ custom image
def test_image_trigger_from_png_with_alpha(tmp_path):
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 255, 128, 0
    rgba[1:3, 1:5, 3] = 255  # opaque inside, transparent border
    path = tmp_path / "trigger.png"
    Image.fromarray(rgba, "RGBA").save(path)
    trigger = build_trigger("image", image=str(path), position="top_left", margin=2)
    x = images((2, 3, 16, 16))
    y = trigger(x)
    mask = trigger.mask(x.shape)
    assert mask.sum() == 8 and mask[0, 0, 3:5, 3:7].all()
    torch.testing.assert_close(y[:, :, 3:5, 3:7], torch.tensor([1.0, 128 / 255, 0.0]).view(1, 3, 1, 1).expand(2, 3, 2, 4))
    assert torch.equal(y[~mask.expand_as(x)], x[~mask.expand_as(x)])
    gray = trigger(images((1, 1, 16, 16)))  # RGB picture on gray input: its luma
    torch.testing.assert_close(gray[0, 0, 3, 3], torch.tensor(0.299 + 0.587 * 128 / 255))
    half = build_trigger("image", image=path, alpha=0.5, position=(0, 0))(x)  # blended, not pasted
    torch.testing.assert_close(half[:, 0, 1, 1], 0.5 * x[:, 0, 1, 1] + 0.5)


def test_image_trigger_from_jpeg_and_resize(tmp_path):
    path = tmp_path / "trigger.jpg"
    Image.fromarray(np.full((10, 10), 200, dtype=np.uint8), "L").save(path)
    trigger = build_trigger("image", image=path, size=(4, 4), position="center")
    y = trigger(images((1, 3, 12, 12)))
    assert trigger.mask((12, 12)).sum() == 16
    assert (y[0, :, 4:8, 4:8] - 200 / 255).abs().max() < 0.02


# ------------------------------------------------------------------------------------------------- bad inputs
def test_bad_images_raise():
    trigger = Patch()
    for bad in (torch.rand(3, 8, 8), torch.full((1, 1, 8, 8), 1.5), torch.zeros(1, 1, 8, 8, dtype=torch.uint8),
                torch.full((1, 1, 8, 8), float("nan")), np.zeros((1, 1, 8, 8))):
        with pytest.raises(XaisecError):
            trigger(bad)


def test_bad_configs_raise(tmp_path):
    cases = [
        ("patch", {"size": 0}), ("patch", {"size": 1.5}), ("patch", {"position": "middle"}),
        ("patch", {"position": (1, -1)}), ("patch", {"colour": (1, 0)}), ("patch", {"colour": 255}),
        ("patch", {"margin": -1}), ("pixel", {"pixels": []}), ("pixel", {"pixels": [(0.5, 1)]}),
        ("blend", {"alpha": 2.0}), ("blend", {"seed": 1.5}), ("moire", {"period": -1.0}), ("moire", {"warp": 1.0}),
        ("moire", {"layers": 0}), ("moire", {"opacity": -0.1}), ("nashville", {"quantize": "yes"}),
        ("image", {"image": 3}), ("image", {"image": torch.rand(3, 4, 4), "alpha": 0.0}),
        ("image", {"image": torch.rand(3, 4, 4), "size": 0.5}),
    ]
    for name, options in cases:
        with pytest.raises(ConfigError):
            build_trigger(name, **options)


def test_bad_data_raise(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_trigger("image", image=tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read"):
        build_trigger("image", image=tmp_path / "broken.png")
    with pytest.raises(DataError, match="same height and width"):
        build_trigger("image", image=torch.rand(3, 4, 4), mask=torch.ones(5, 5))
    with pytest.raises(DataError, match="expected"):
        build_trigger("image", image=torch.rand(2, 3, 4, 4))
    with pytest.raises(DataError, match="does not fit"):
        build_trigger("image", image=torch.rand(3, 40, 40))(images((1, 3, 32, 32)))
    with pytest.raises(DataError, match="does not fit"):
        Patch(size=9)(images((1, 3, 8, 8)))
    with pytest.raises(DataError, match="outside"):
        build_trigger("pixel", pixels=[(8, 0)])(images((1, 1, 8, 8)))
    with pytest.raises(DataError, match="channels"):
        Nashville()(images((1, 2, 8, 8)))
    with pytest.raises(DataError, match="channels"):
        Patch(colour=(1.0, 0.5, 0.0))(images((1, 2, 8, 8)))
    with pytest.raises(DataError, match="channels"):
        build_trigger("image", image=torch.rand(3, 4, 4))(images((1, 2, 8, 8)))
    with pytest.raises(DataError, match="not an image shape"):
        Patch().mask((5,))
