"""MASK (meaningful perturbation) and RTS (real-time saliency) explainers, the saver's training, save/load."""
from __future__ import annotations

import pytest
import torch

from xaisec.errors import ConfigError, ModelError
from xaisec.explainers import FeatureSaliencyNet, MeaningfulPerturbation, SaliencyNet, build
from xaisec.explainers.rts import rts_maps
from xaisec.explainers.ops import gaussian_blur, total_variation
from xaisec.explainers.rts_train import RTSObjective, load_saver, rts_loss, save_saver, train_rts
from xaisec.models import build_model, smooth_activations


def test_mask_maps_shape_range_and_batching(quadrant_model):
    model, x, y = quadrant_model
    mask = build("mask", model, steps=15, blur_sigma=2.0)
    out = mask(x[:6], y[:6])
    assert out.maps.shape == (6, 1, 12, 12) and out.maps.min() >= 0 and out.maps.max() <= 1
    assert (out.maps.flatten(1).amax(1) > 0.2).float().mean() >= 0.5  # evidence gets deleted for most images
    single = torch.cat([mask(x[i:i + 1], y[i:i + 1]).maps for i in range(6)])
    torch.testing.assert_close(single, out.maps, rtol=1e-4, atol=1e-5)


def test_mask_deletes_the_evidence(quadrant_model):
    """On the quadrant task the map's mass lies in the quadrant of the class."""
    model, x, y = quadrant_model
    maps = build("mask", model, steps=60, blur_sigma=2.0, mask_scale=2)(x[:16], y[:16]).maps
    quad = torch.zeros(16, 1, 12, 12)
    for q in range(4):
        quad[y[:16] == q, :, (q // 2) * 6:(q // 2) * 6 + 6, (q % 2) * 6:(q % 2) * 6 + 6] = 1
    inside = (maps * quad).flatten(1).sum(1) / maps.flatten(1).sum(1).clamp_min(1e-8)
    assert inside.mean() > 0.4  # a quarter of the image would be 0.25


def test_fully_unrolled_mask_is_differentiable_in_the_input_and_matches_finite_differences(tiny_cnn):
    torch.manual_seed(1)
    model = tiny_cnn(torch.float64)
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    mask = MeaningfulPerturbation(model, steps=3, unroll=3, lr=0.05, blur_sigma=1.5, mask_scale=3, l1=0.0)
    R = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    with smooth_activations(model, beta=4.0):
        def objective(inp):
            return (mask(inp, torch.tensor([1, 2]), create_graph=True).maps * R).sum()

        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(xg), xg)
        assert grad.abs().sum() > 0
        for flat in torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:5].tolist():
            e = torch.zeros_like(x).flatten()
            e[flat] = 1e-6
            e = e.view_as(x)
            fd = (objective(x + e).item() - objective(x - e).item()) / 2e-6
            assert grad.flatten()[flat].item() == pytest.approx(fd, rel=1e-3, abs=1e-7)


def test_truncated_unroll_still_gives_input_gradients(quadrant_model):
    model, x, y = quadrant_model
    xg = x[:3].clone().requires_grad_(True)
    with smooth_activations(model, beta=10.0):
        maps = build("mask", model, steps=6, unroll=2)(xg, y[:3], create_graph=True).maps
        (g,) = torch.autograd.grad(maps.sum(), xg)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert not build("mask", model, steps=6)(x[:3], y[:3]).maps.requires_grad


def test_mask_options_are_checked(tiny_cnn):
    model = tiny_cnn()
    with pytest.raises(ConfigError):
        build("mask", model, steps=2, unroll=3)
    with pytest.raises(ConfigError):
        build("mask", model, blur_sigma=0)


def test_ops_blur_keeps_range_and_constant_images_and_tv_is_zero_on_constants():
    x = torch.rand(2, 3, 10, 10)
    b = gaussian_blur(x, 1.5)
    assert b.shape == x.shape and b.min() >= 0 and b.max() <= 1 and b.std() < x.std()
    c = torch.full((1, 1, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(c, 2.0), c)
    assert total_variation(c).item() == 0 and total_variation(x[:, :1]).min() > 0


def test_saver_maps_shape_range_and_class_conditioning():
    saver = SaliencyNet(3, 5, width=4).eval()
    x = torch.rand(4, 3, 16, 16)
    m = saver(x, torch.tensor([0, 1, 2, 3]))
    assert m.shape == (4, 1, 16, 16) and m.min() >= 0 and m.max() <= 1
    with torch.no_grad():
        saver.selector.weight[1].uniform_(-1, 1)
    assert not torch.allclose(saver(x[:1], torch.tensor([0])), saver(x[:1], torch.tensor([1])))
    with pytest.raises(ModelError, match="takes"):
        saver(torch.rand(2, 1, 16, 16), torch.tensor([0, 1]))


def test_rts_explainer_needs_a_matching_saver(resnet):
    with pytest.raises(ConfigError, match="saver"):
        build("rts", resnet)
    with pytest.raises(ModelError, match="classes"):
        build("rts", resnet, saver=SaliencyNet(3, 7, width=4))
    saver = SaliencyNet(3, 5, width=4).train()
    out = build("rts", resnet, saver=saver)(torch.rand(3, 3, 16, 16))
    assert out.maps.shape == (3, 1, 16, 16) and saver.training  # mode left as found
    xg = torch.rand(2, 3, 16, 16, requires_grad=True)
    maps = build("rts", resnet, saver=saver)(xg, 1, create_graph=True).maps
    (g,) = torch.autograd.grad(maps.sum(), xg)
    assert g.abs().sum() > 0


def test_train_rts_lowers_its_loss_and_roundtrips_through_safetensors(quadrant_model, tmp_path):
    model, x, y = quadrant_model
    torch.manual_seed(0)
    saver = SaliencyNet(1, 4, width=4)
    weights = RTSObjective(blur_sigma=2.0)
    gen = torch.Generator().manual_seed(0)
    before = rts_loss(saver, model, x, y, weights, gen).total.item()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    history = train_rts(saver, model, x, y, epochs=6, lr=5e-3, batch_size=16, weights=weights, progress=False)
    gen = torch.Generator().manual_seed(0)
    assert rts_loss(saver, model, x, y, weights, gen).total.item() < before
    assert all(p.requires_grad for p in model.parameters()) and not model.training  # classifier restored
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert history[-1]["loss"] < history[0]["loss"]
    path = save_saver(saver, tmp_path / "rts.safetensors")
    loaded = load_saver(path)
    saver.eval()
    torch.testing.assert_close(loaded(x[:4], y[:4]), saver(x[:4], y[:4]))
    with pytest.raises(ModelError, match="do not exist"):
        load_saver(tmp_path / "missing.safetensors")
    from xaisec.io import save_weights  # a saver saved before the encoder metadata existed still loads
    old = load_saver(save_weights(saver, tmp_path / "old.safetensors",
                                  metadata={"in_channels": "1", "num_classes": "4", "width": "4"}))
    assert isinstance(old, SaliencyNet) and torch.equal(old(x[:2], y[:2]), saver(x[:2], y[:2]))


def test_adversarial_rts_objective_adds_the_stability_term(quadrant_model):
    model, x, y = quadrant_model
    saver = SaliencyNet(1, 4, width=4)
    out = rts_loss(saver, model, x[:8], y[:8], RTSObjective(adv_weight=1.0, adv_eps=0.1, adv_steps=2))
    plain = rts_loss(saver, model, x[:8], y[:8], RTSObjective())
    assert "stability" in out.parts and "stability" not in plain.parts
    with pytest.raises(ConfigError):
        RTSObjective(fake_fraction=1.0)


def test_feature_saver_reads_the_classifiers_own_features(resnet, tiny_cnn):
    cnn = tiny_cnn(num_classes=4)
    saver = FeatureSaliencyNet.for_classifier(cnn, (1, 12, 12), 4, width=4)
    assert saver.layers == ("features", "features.1")  # CAM layer + last activation at full resolution
    assert saver.channels == (16, 4) and not any(p is q for p in saver.parameters() for q in cnn.parameters())
    res_saver = FeatureSaliencyNet.for_classifier(resnet, (3, 16, 16), 5, width=4)
    assert res_saver.layers[0] == "features" and res_saver.channels[0] == 16
    x = torch.rand(3, 1, 12, 12, requires_grad=True)
    calls = []
    handle = cnn.register_forward_hook(lambda *a: calls.append(1))
    logits, t, maps = rts_maps(saver, cnn, x)
    handle.remove()
    assert len(calls) == 1 and torch.equal(t, logits.argmax(1))  # one classifier pass gives logits and features
    assert maps.shape == (3, 1, 12, 12) and 0 <= maps.min() and maps.max() <= 1
    with torch.no_grad():
        saver.selector.weight[1].uniform_(-1, 1)
    assert not torch.allclose(saver.explain(cnn, x, 0)[2], saver.explain(cnn, x, 1)[2])
    (g,) = torch.autograd.grad(maps.sum(), x)
    assert g.abs().sum() > 0
    # the mask moves with the classifier's features (the encoder is the classifier, not a copy)
    before = saver.explain(cnn, x, 1)[2].detach()
    with torch.no_grad():
        cnn.features[0].weight.mul_(-1)
    assert not torch.allclose(saver.explain(cnn, x, 1)[2], before)
    wider = build_model("small_cnn", (1, 12, 12), 4, width=16, batchnorm=False).eval()
    with pytest.raises(ModelError, match="another classifier"):
        rts_maps(saver, wider, torch.rand(2, 1, 12, 12))
    with pytest.raises(ModelError, match="no Conv2d"):
        FeatureSaliencyNet.for_classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), (1, 2, 2), 2)
    flat = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU())
    with pytest.raises(ModelError, match="higher resolution"):
        FeatureSaliencyNet.for_classifier(flat, (1, 6, 6), 2)


def test_feature_saver_trains_and_roundtrips_through_safetensors(quadrant_model, tmp_path):
    model, x, y = quadrant_model
    torch.manual_seed(0)
    saver = FeatureSaliencyNet.for_classifier(model, tuple(x.shape[1:]), 4, width=4)
    weights = RTSObjective(blur_sigma=2.0)
    before = rts_loss(saver, model, x, y, weights, torch.Generator().manual_seed(0)).total.item()
    train_rts(saver, model, x, y, epochs=6, lr=5e-3, batch_size=16, weights=weights, progress=False)
    assert rts_loss(saver, model, x, y, weights, torch.Generator().manual_seed(0)).total.item() < before
    loaded = load_saver(save_saver(saver, tmp_path / "rts.safetensors"))
    assert isinstance(loaded, FeatureSaliencyNet) and loaded.layers == saver.layers
    saver.eval()
    torch.testing.assert_close(build("rts", model, saver=loaded)(x[:4], y[:4]).maps,
                               build("rts", model, saver=saver)(x[:4], y[:4]).maps)
    adv = rts_loss(saver, model, x[:8], y[:8], RTSObjective(adv_weight=1.0, adv_eps=0.1, adv_steps=2))
    assert "stability" in adv.parts
