"""Architectures, the input normalisation layer and the ReLU <-> Softplus swap."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xaisec.errors import ModelError, XaisecError
from xaisec.models import (MODELS, Normalize, build_model, default_cam_layer, fold_batchnorm, get_layer,
                           smooth_activations)


@pytest.mark.parametrize("name,shape", [("small_cnn", (1, 28, 28)), ("vgg_small", (3, 32, 32)),
                                        ("resnet20", (3, 32, 32)), ("mlp", (30,))])
def test_models_build_and_run(name, shape):
    model = build_model(name, shape, 7).eval()
    assert model(torch.rand(2, *shape)).shape == (2, 7)
    assert isinstance(model.normalize, Normalize)


def test_resnet20_has_twenty_weight_layers():
    model = build_model("resnet20", (3, 32, 32), 10)
    convs = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in n]
    assert len(convs) + 1 == 20  # 19 convs on the main path + the linear head
    assert 0.26e6 < sum(p.numel() for p in model.parameters()) < 0.29e6


def test_normalize_is_first_and_correct():
    norm = Normalize([0.5, 0.25], [0.5, 0.25])
    x = torch.rand(2, 2, 3, 3)
    torch.testing.assert_close(norm(x)[:, 1], (x[:, 1] - 0.25) / 0.25)
    with pytest.raises(ModelError):
        Normalize([0.0], [0.0])


def test_smooth_activations_swaps_and_restores():
    model = build_model("resnet20", (3, 16, 16), 3, width=4, blocks_per_stage=1).eval()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    x = torch.rand(2, 3, 16, 16)
    out_relu = model(x)
    with smooth_activations(model, beta=8.0):
        assert not any(isinstance(m, nn.ReLU) for m in model.modules())
        assert all(m.beta == 8.0 for m in model.modules() if isinstance(m, nn.Softplus))
        assert not torch.allclose(model(x), out_relu)
    assert [m for m in model.modules() if isinstance(m, nn.ReLU)] == relus
    torch.testing.assert_close(model(x), out_relu)
    with pytest.raises(RuntimeError):
        with smooth_activations(model):
            raise RuntimeError("restored even on error")
    assert [m for m in model.modules() if isinstance(m, nn.ReLU)] == relus


def test_maxpool_fast_path_equals_max_pool2d():
    from xaisec.models import MaxPool2d
    torch.manual_seed(0)
    for shape in [(3, 4, 8, 8), (2, 3, 7, 9), (1, 1, 2, 3)]:
        x = torch.randn(shape)
        x[0, 0, 0, :2] = 5.0  # ties
        with torch.no_grad():
            assert torch.equal(MaxPool2d(2)(x), nn.functional.max_pool2d(x, 2))
    x = torch.randn(2, 3, 7, 7)  # other kernels: nn.MaxPool2d itself
    torch.testing.assert_close(MaxPool2d(3, 2)(x), nn.functional.max_pool2d(x, 3, 2))
    x = torch.randn(2, 3, 6, 6, requires_grad=True)  # with autograd: nn.MaxPool2d itself (same gradients)
    (g,) = torch.autograd.grad(MaxPool2d(2)(x).sum(), x)
    (g_ref,) = torch.autograd.grad(nn.functional.max_pool2d(x, 2).sum(), x)
    assert torch.equal(g, g_ref)
    assert isinstance(build_model("small_cnn", (1, 28, 28), 10).features[3], nn.MaxPool2d)


def _with_random_bn_statistics(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.double().eval()


def _input_gradient_loss(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Parameter gradients of a loss on the input gradient (a double backward, as simplegrad training does)."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (g,) = torch.autograd.grad(logits[:, 0].sum(), x, create_graph=True)
    loss = g.pow(2).sum() + logits.logsumexp(1).sum()
    return [logits.detach(), *torch.autograd.grad(loss, list(model.parameters()))]


@pytest.mark.parametrize("name,shape", [("small_cnn", (1, 12, 12)), ("resnet20", (3, 16, 16)),
                                        ("vgg_small", (3, 16, 16))])
def test_fold_batchnorm_keeps_outputs_and_second_order_gradients(name, shape):
    options = {"blocks_per_stage": 1, "width": 4} if name == "resnet20" else {}
    model = _with_random_bn_statistics(build_model(name, shape, 3, **options))
    x = torch.rand(4, *shape, dtype=torch.float64)
    expected = _input_gradient_loss(model, x)
    bn_calls = []
    handles = [m.register_forward_hook(lambda m, i, o: bn_calls.append(m)) for m in model.modules()
               if isinstance(m, nn.BatchNorm2d)]
    with fold_batchnorm(model):
        folded = [m for m in model.modules() if "forward" in vars(m)]
        assert len(folded) == 2 * sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        got = _input_gradient_loss(model, x)
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert not any("forward" in vars(m) for m in model.modules())  # restored
    bn_calls.clear()
    model(x)
    assert bn_calls and all(isinstance(m, nn.BatchNorm2d) for m in bn_calls)
    for h in handles:
        h.remove()


def test_fold_batchnorm_leaves_train_mode_and_kept_convs_alone():
    model = _with_random_bn_statistics(build_model("small_cnn", (1, 12, 12), 3))
    x = torch.rand(4, 1, 12, 12, dtype=torch.float64)
    model.features[1].train()  # batch statistics are not a per-channel affine map: never folded
    with fold_batchnorm(model, keep=["features.4"]):
        patched = {n for n, m in model.named_modules() if "forward" in vars(m)}
    assert patched == {"features.7", "features.8"}
    seen = []
    handle = model.features[4].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model.eval()
        reference = model.features[4](model.features[:4](model.normalize(x)))
        with fold_batchnorm(model, keep=["features.4"]):
            model(x)
    handle.remove()
    torch.testing.assert_close(seen[0], reference)  # a hooked conv keeps its own (pre-BatchNorm) output


def test_layers_and_errors():
    model = build_model("small_cnn", (1, 28, 28), 10)
    assert default_cam_layer(model) == "features"
    assert isinstance(get_layer(model, "features.0"), nn.Conv2d)
    with pytest.raises(ModelError, match="Did you mean"):
        get_layer(model, "feature")
    with pytest.raises(XaisecError, match="Did you mean 'resnet20'"):
        build_model("resnet21", (3, 32, 32), 10)
    with pytest.raises(ModelError, match="mlp"):
        build_model("small_cnn", (30,), 2)
    assert "small_cnn" in MODELS and len(MODELS) >= 4


def test_fold_batchnorm_unfolds_a_conv_hooked_inside_the_block():
    model = _with_random_bn_statistics(build_model("small_cnn", (1, 12, 12), 3))
    x = torch.rand(4, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        conv_out = model.features[4](model.features[:4](model.normalize(x)))
        logits = model(x)
    seen = []
    with torch.no_grad(), fold_batchnorm(model):
        handle = model.features[4].register_forward_hook(lambda m, i, o: seen.append(o))  # as an explainer does
        hooked_logits = model(x)
        handle.remove()
        folded_logits = model(x)
    torch.testing.assert_close(seen[0], conv_out, rtol=1e-12, atol=1e-12)  # the hook sees the conv's own output
    torch.testing.assert_close(hooked_logits, logits, rtol=1e-12, atol=1e-12)  # and its BatchNorm is applied
    torch.testing.assert_close(folded_logits, logits, rtol=1e-12, atol=1e-12)


def test_smooth_activations_smooth_the_forward_pass_only():
    """Inside smooth_activations the model's ReLUs are Softplus, but an explainer's own ReLU on its map (Grad-CAM's)
    stays a ReLU: the maps equal those of a copy whose ReLU modules were swapped by hand (a leak of the functional
    ReLU replacement into the explainer once made training maps differ from evaluation maps)."""
    import copy

    from torch import nn

    from xaisec.explainers import explain_all
    from xaisec.models import build_model, smooth_activations

    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 12, 12), 4, width=8, batchnorm=False).eval()
    by_hand = copy.deepcopy(model)
    for name, module in list(by_hand.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, nn.Softplus(beta=8.0))
    x = torch.rand(3, 1, 12, 12)
    with smooth_activations(model, 8.0):
        smoothed = explain_all(model, x, None, ["gradcam", "simplegrad"]).maps
    expected = explain_all(by_hand, x, None, ["gradcam", "simplegrad"]).maps
    for name in expected:
        torch.testing.assert_close(smoothed[name], expected[name])
