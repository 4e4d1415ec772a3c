"""PGD, StAdv and ADV2: constraints, loss decrease, batching, and ADV2 beating PGD on the target map."""
from __future__ import annotations

import pytest
import torch

from xaisec.errors import ConfigError, DataError
from xaisec.evasion import (PGD, Adv2PGD, Adv2StAdv, AttackObjective, InterpreterTerm, MaskTerm, RampSchedule, StAdv,
                            flow_loss, patch_maps, pick_class_examples, random_target_classes, warp)
from xaisec.explainers import build
from xaisec.maps import MapPostprocess, distance


@pytest.fixture
def trained(quadrant_model):
    return quadrant_model


def _targets(y, k=4):
    return random_target_classes(y, k, torch.Generator().manual_seed(0))


def test_pgd_stays_in_its_ball_and_the_box(trained):
    model, x, y = trained
    x, yt = x[:12], _targets(y[:12])
    for random_start in (False, True):
        x_adv = PGD(model, eps=0.03, step=0.01, steps=8, random_start=random_start)(x, yt)
        assert (x_adv - x).abs().max() <= 0.03 + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1 and not x_adv.requires_grad


def test_pgd_lowers_its_loss_and_reaches_the_target(trained):
    model, x, y = trained
    x, yt = x[:16], _targets(y[:16])
    objective = AttackObjective(model)
    before = objective(x, yt).prd.mean()
    x_adv = PGD(model, eps=0.2, step=0.02, steps=30)(x, yt)
    assert objective(x_adv, yt).prd.mean() < 0.5 * before
    assert (model(x_adv).argmax(1) == yt).float().mean() >= 0.9


def test_pgd_batched_equals_per_image(tiny_cnn):
    model = tiny_cnn(torch.float64)
    x = torch.rand(4, 1, 12, 12, dtype=torch.float64)
    yt = torch.tensor([0, 1, 2, 3])
    term = InterpreterTerm(build("cam", model), post=MapPostprocess(pool=2))
    targets = patch_maps(4, (12, 12), 0.2, torch.Generator().manual_seed(0)).double()
    for attack, kw in ((PGD(model, eps=0.05, step=0.01, steps=5), {}),
                       (Adv2PGD(model, [term], eps=0.05, step=0.01, steps=6, warmup=2, c=3.0), {"target_maps": targets})):
        batched = attack(x, yt, **kw)
        single = torch.cat([attack(x[i:i + 1], yt[i:i + 1], **{k: v[i:i + 1] for k, v in kw.items()}) for i in range(4)])
        torch.testing.assert_close(batched, single, rtol=0, atol=1e-9)


def test_stadv_stays_in_the_box_respects_max_flow_and_lowers_its_loss(trained):
    model, x, y = trained
    x, yt = x[:8], _targets(y[:8])
    attack = StAdv(model, tau=1e-3, lr=0.05, steps=25, max_flow=1.0)
    x_adv = attack(x, yt)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert attack.last_flow.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(warp(x, attack.last_flow), x_adv, rtol=0, atol=1e-6)
    objective = AttackObjective(model)
    assert objective(x_adv, yt).prd.mean() < objective(x, yt).prd.mean()


def test_warp_with_zero_flow_is_the_identity_and_flow_loss_of_constant_flow_is_tiny():
    x = torch.rand(2, 3, 9, 7)
    torch.testing.assert_close(warp(x, torch.zeros(2, 2, 9, 7)), x)
    shifted = warp(x, torch.ones(2, 2, 9, 7))  # one pixel right and down
    torch.testing.assert_close(shifted[..., :-1, :-1], x[..., 1:, 1:])
    assert flow_loss(torch.ones(2, 2, 9, 7)).max() < 0.05  # only the sqrt(1e-8) floor per neighbour pair
    assert flow_loss(torch.randn(2, 2, 9, 7)).min() > 1


@pytest.mark.parametrize("explainer", ["cam", "gradcam", "simplegrad"])
def test_adv2_maps_are_closer_to_the_target_than_pgd(trained, explainer):
    model, x, y = trained
    x, yt = x[:16], _targets(y[:16])
    post = MapPostprocess(pool=2)
    e = build(explainer, model)
    targets = patch_maps(len(x), (12, 12), 0.25, torch.Generator().manual_seed(3))
    beta = 10.0 if explainer == "simplegrad" else None
    x_pgd = PGD(model, eps=0.2, step=0.02, steps=60)(x, yt)
    x_adv = Adv2PGD(model, [InterpreterTerm(e, post=post, smooth_beta=beta)], eps=0.2, step=0.01, steps=60,
                    warmup=20, c=20.0)(x, yt, target_maps=targets)
    assert (model(x_adv).argmax(1) == yt).float().mean() >= 0.9
    d_pgd = distance(post(e(x_pgd, yt).maps), post(targets), "l1").mean()
    d_adv = distance(post(e(x_adv, yt).maps), post(targets), "l1").mean()
    assert d_adv < 0.8 * d_pgd, (d_adv, d_pgd)


def test_adv2_stadv_moves_the_map_towards_the_target(trained):
    model, x, y = trained
    x, yt = x[:8], _targets(y[:8])
    post, e = MapPostprocess(pool=2), build("cam", model)
    targets = patch_maps(len(x), (12, 12), 0.25, torch.Generator().manual_seed(3))
    plain = StAdv(model, lr=0.05, steps=40)(x, yt)
    adv = Adv2StAdv(model, [InterpreterTerm(e, post=post)], lr=0.05, steps=40, warmup=10, c=20.0)(x, yt, target_maps=targets)
    d = lambda xx: distance(post(e(xx, yt).maps), post(targets), "l1").mean()  # noqa: E731
    assert d(adv) < d(plain)


def test_mask_term_runs_algorithm_1_and_beats_pgd_on_the_mask_map(trained):
    model, x, y = trained
    x, yt = x[:8], _targets(y[:8])
    post = MapPostprocess(pool=2)
    mask = build("mask", model, steps=10, unroll=1, blur_sigma=2.0)
    targets = patch_maps(len(x), (12, 12), 0.25, torch.Generator().manual_seed(3))
    term = MaskTerm(mask, post=post, inner_steps=2)
    term.maps(x, yt)
    assert term.state is not None and term.state.keep.shape == (8, 1, 3, 3) and term.state.step == 10
    x_pgd = PGD(model, eps=0.2, step=0.02, steps=30)(x, yt)
    x_adv = Adv2PGD(model, [term], eps=0.2, step=0.01, steps=40, warmup=10, c=50.0)(x, yt, target_maps=targets)
    assert term.state.step > 10 + 30  # warm-started inner steps accumulated over the attack
    # the fresh MASK interpreter (not the attack's warm state) is fooled more than by PGD
    d = lambda xx: distance(post(mask(xx, yt).maps), post(targets), "l1").mean()  # noqa: E731
    assert d(x_adv) < 0.9 * d(x_pgd)
    assert (model(x_adv).argmax(1) == yt).float().mean() >= 0.85


def test_ramp_schedule_and_bad_settings(tiny_cnn):
    s = RampSchedule(warmup=3, steps=8, c=2.0)
    assert [s(i) for i in range(3)] == [0, 0, 0]
    assert s(3) == 2.0 and s(7) == pytest.approx(4.0)
    with pytest.raises(ConfigError):
        RampSchedule(warmup=5, steps=5, c=1.0)
    model = tiny_cnn()
    with pytest.raises(ConfigError, match="eps"):
        PGD(model, eps=0)
    with pytest.raises(ConfigError, match="at least one interpreter"):
        Adv2PGD(model, [])
    with pytest.raises(ConfigError, match="'ce' or 'margin'"):
        AttackObjective(model, prd="hinge")


def test_bad_inputs_and_missing_target_maps_are_explained(tiny_cnn):
    model = tiny_cnn()
    x = torch.rand(2, 1, 12, 12)
    attack = Adv2PGD(model, [InterpreterTerm(build("cam", model))], steps=3, warmup=1)
    with pytest.raises(DataError, match="target_maps"):
        attack(x, torch.tensor([0, 1]))
    with pytest.raises(DataError, match="expected"):
        attack(x, torch.tensor([0, 1]), target_maps={"cam": torch.rand(2, 1, 6, 6)})
    with pytest.raises(DataError, match="y_target"):
        attack(x, torch.tensor([0, 9]), target_maps={"cam": torch.rand(2, 1, 12, 12)})
    with pytest.raises(DataError, match=r"\[0,1\]"):
        PGD(model, steps=1)(x * 3, torch.tensor([0, 1]))


def test_attack_leaves_the_model_as_found(tiny_cnn):
    model = tiny_cnn(batchnorm=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    PGD(model, steps=2)(torch.rand(2, 1, 12, 12), torch.tensor([0, 1]))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_target_helpers():
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    yt = random_target_classes(y, 4, gen)
    assert (yt != y).all() and yt.max() < 4
    pool_y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    correct = torch.tensor([True, True, True, True, False, False, False, False])
    idx = pick_class_examples(yt, pool_y, correct, gen)
    assert (pool_y[idx] == yt).all() and correct[idx].all()
    with pytest.raises(DataError, match="no correctly classified"):
        pick_class_examples(torch.tensor([3]), pool_y, torch.zeros(8, dtype=torch.bool), gen)
    maps = patch_maps(5, (10, 10), 0.25, gen)
    assert maps.shape == (5, 1, 10, 10) and (maps.sum((1, 2, 3)) == 25).all()


def test_warp_stays_in_the_box_despite_float_rounding():
    """Bilinear resampling of saturated pixels can land 1 ulp above 1 (seen on `shapes`: the explainers then
    refused the StAdv iterate); warp must return pixels in [0,1] exactly."""
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    x[x > 0.3] = 1.0
    flow = torch.rand(16, 2, 32, 32) * 3 - 1.5
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    grid = torch.stack([2 * (xs + flow[:, 0]) / 31 - 1, 2 * (ys + flow[:, 1]) / 31 - 1], dim=-1)
    raw = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    assert raw.max() > 1  # the rounding case this test is about does occur
    out = warp(x, flow)
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, raw, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,layer", [("simplegrad", None), ("gradcam", "features.4")])
def test_attack_folds_batchnorm_with_the_same_result(name, layer, monkeypatch):
    """Attacks run with eval-mode BatchNorm folded into the convs: the same iterates as the plain model (float64,
    so rounding cannot flip a gradient sign), also when the explainer hooks a conv that has a BatchNorm after it."""
    import contextlib

    import xaisec.evasion.base as base
    from xaisec.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 12, 12), 3).double()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(4, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y, maps = torch.arange(4) % 3, torch.rand(4, 1, 12, 12, dtype=torch.float64)
    options = {"layer": layer} if layer else {}
    term = InterpreterTerm(build(name, model, **options), smooth_beta=10.0 if name == "simplegrad" else None)
    attack = Adv2PGD(model, [term], eps=0.1, step=0.01, steps=6, warmup=2, c=1.0)
    folded_convs = []
    evaluate = attack.evaluate
    attack.evaluate = lambda *a: (folded_convs.append("forward" in vars(model.features[0])), evaluate(*a))[1]
    x_folded = attack(x, y, target_maps={name: maps})
    assert folded_convs and all(folded_convs)
    monkeypatch.setattr(base, "fold_batchnorm", lambda m: contextlib.nullcontext(m))
    folded_convs.clear()
    x_plain = attack(x, y, target_maps={name: maps})
    assert folded_convs and not any(folded_convs)
    torch.testing.assert_close(x_folded, x_plain, rtol=0, atol=1e-12)
