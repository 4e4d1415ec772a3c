"""Invariants every explainer must satisfy, parametrised over the registry."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xaisec.errors import DataError, ModelError, XaisecError
from xaisec.explainers import EXPLAINERS, build, explain, explain_all
from xaisec.models import build_model

@pytest.mark.parametrize("name", EXPLAINERS.names())
@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_maps_shape_finite_and_batched_equals_per_sample(name, arch, request, make_explainer):
    model = request.getfixturevalue(arch)
    x = torch.rand(4, *({"cnn": (1, 12, 12), "resnet": (3, 16, 16)}[arch]))
    explainer = make_explainer(name, model)
    out = explainer(x, target=torch.tensor([0, 1, 2, 3]))
    assert out.maps.shape == (4, 1, *x.shape[-2:]) and out.logits.shape[0] == 4
    assert torch.isfinite(out.maps).all() and out.maps.abs().sum() > 0
    assert not out.maps.requires_grad  # detached without create_graph
    single = torch.cat([explainer(x[i:i + 1], target=i).maps for i in range(4)])
    torch.testing.assert_close(single, out.maps, rtol=1e-4, atol=1e-6)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_model_left_as_found(name, images, make_explainer, tiny_cnn):
    model = tiny_cnn(batchnorm=True).train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    make_explainer(name, model)(images, create_graph=True)
    assert not model.training
    model.train()
    make_explainer(name, model)(images)
    assert model.training and _hooks(model) == 0
    for p in model.parameters():
        assert torch.equal(p.grad, torch.full_like(p, 7.0))
    for k, v in model.state_dict().items():
        if "running" not in k and "num_batches" not in k:  # BN statistics move in train mode, as in any forward
            assert torch.equal(v, before[k]), k


class Exploding(nn.Module):
    """Raises inside the forward pass, after the hooked layers ran."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.cam_layer, self.head = inner, "inner.features", inner.head

    def forward(self, x):
        self.inner(x)
        raise RuntimeError("boom")


@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_no_hook_left_when_the_forward_raises(name, cnn, images, make_explainer):
    model = Exploding(cnn)
    with pytest.raises((RuntimeError, DataError), match="boom"):  # DataError: the model's error, named and chained
        make_explainer(name, model)(images)
    assert _hooks(model) == 0


def test_joint_explain_equals_separate_calls(cnn, images, make_explainer):
    y = torch.tensor([0, 1, 2, 3, 0])
    joint = explain_all(cnn, images, y, ["gradcam", "simplegrad", "vbp", "ig"], options={"ig": {"steps": 8}})
    assert list(joint.maps) == ["gradcam", "simplegrad", "vbp", "ig"]
    for name, maps in joint.maps.items():
        torch.testing.assert_close(maps, make_explainer(name, cnn)(images, y).maps)
    torch.testing.assert_close(joint.logits, cnn(images).detach())


def test_joint_explain_runs_one_forward_and_one_backward(cnn, images):
    calls = {"forward": 0}
    handle = cnn.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
    grads = []
    original = torch.autograd.grad
    try:
        torch.autograd.grad = lambda *a, **k: grads.append(1) or original(*a, **k)
        explain(cnn, images, None, ["gradcam", "simplegrad", "vbp", "gradcampp", "inputxgrad", "cam"])
    finally:
        torch.autograd.grad = original
        handle.remove()
    assert calls["forward"] == 1 and len(grads) == 1


def test_target_defaults_to_prediction(cnn, images):
    out = build("simplegrad", cnn)(images)
    pred = cnn(images).argmax(1)
    torch.testing.assert_close(out.maps, build("simplegrad", cnn)(images, pred).maps)


def test_gradcam_layer_option_and_errors(cnn, images):
    conv = [n for n, m in cnn.named_modules() if isinstance(m, nn.Conv2d)][1]
    assert build("gradcam", cnn, layer=conv)(images).maps.shape == (5, 1, 12, 12)
    with pytest.raises(ModelError, match="no layer 'featurs'.*Did you mean 'features'"):
        build("gradcam", cnn, layer="featurs")
    with pytest.raises(XaisecError, match="does not take a layer"):
        build("simplegrad", cnn, layer="features")
    with pytest.raises(XaisecError, match="Did you mean 'gradcam'"):
        build("gradcan", cnn)
    with pytest.raises(XaisecError, match="no option"):
        build("simplegrad", cnn, steps=3)


def test_bad_inputs_are_explained(cnn, images):
    g = build("gradcam", cnn)
    with pytest.raises(DataError, match="unsqueeze"):
        g(images[0])
    with pytest.raises(DataError, match=r"\[0,1\]"):
        g(images * 255)
    with pytest.raises(DataError, match="NaN"):
        g(torch.full_like(images, float("nan")))
    with pytest.raises(DataError, match="target classes"):
        g(images, target=9)


def test_cam_methods_refuse_models_without_conv_layers():
    mlp = build_model("mlp", (20,), 3).eval()
    for name in ("gradcam", "cam"):
        with pytest.raises(ModelError, match="simplegrad|gradcam"):
            build(name, mlp)
    with pytest.raises(DataError, match=r"expected \(B,C,H,W\) images"):
        build("vbp", mlp)(torch.rand(4, 20))
    with pytest.raises(ModelError, match="convolutional"):
        build("vbp", mlp)(torch.rand(4, 1, 4, 5))
    maps = build("simplegrad", mlp)(torch.rand(4, 20)).maps  # gradient methods work on tabular features
    assert maps.shape == (4, 20)


def test_inplace_relu_models_are_explained_and_restored(tiny_cnn):
    model = tiny_cnn()
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = True
    x = torch.rand(3, 1, 12, 12)
    maps = explain(model, x, None, ["gradcam", "vbp", "simplegrad"])
    assert all(torch.isfinite(m).all() for m in maps.values())
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


def test_cam_equals_gradcam_without_relu_on_gap_models(cnn, images):
    # with global average pooling + linear head, Grad-CAM's weights are W[target]/(h*w): same map up to scale
    y = torch.tensor([0, 1, 2, 3, 1])
    cam = build("cam", cnn)(images, y).maps
    gradcam = build("gradcam", cnn, relu=False)(images, y).maps
    features = cnn.features(cnn.normalize(images))
    torch.testing.assert_close(gradcam * features.shape[-1] * features.shape[-2], cam, rtol=1e-4, atol=1e-6)


def test_smoothgrad_wraps_any_explainer(cnn, images):
    maps = build("smoothgrad", cnn, base="gradcam", n_samples=3)(images).maps
    assert maps.shape == (5, 1, 12, 12)
    zero_noise = build("smoothgrad", cnn, base="simplegrad", n_samples=2, noise=0.0)(images, 1).maps
    torch.testing.assert_close(zero_noise, build("simplegrad", cnn)(images, 1).maps)


def test_gradshap_with_data_baselines_is_complete_in_expectation(cnn, images):
    # expected gradients: sum of attributions ~ f(x) - E_b f(b) (completeness in expectation)
    base = torch.rand(8, 1, 12, 12)
    maps = build("gradshap", cnn, baselines=base, n_samples=2000)(images, 0).maps.double()
    with torch.no_grad():
        gap = cnn(images)[:, 0] - cnn(base)[:, 0].mean()
    torch.testing.assert_close(maps.sum((1, 2, 3)), gap.double(), rtol=0.1, atol=0.05)


def test_ig_completeness(cnn, images):
    maps = build("ig", cnn, steps=64)(images, 2).maps
    with torch.no_grad():
        gap = cnn(images)[:, 2] - cnn(torch.zeros_like(images))[:, 2]
    torch.testing.assert_close(maps.sum((1, 2, 3)), gap, rtol=1e-3, atol=1e-4)
