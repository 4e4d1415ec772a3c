"""Explainers on torchvision and timm models: Captum agreement, no_grad calls, in-place ReLUs, module-object layers,
wrapped models and token models."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xaisec.errors import ModelError
from xaisec.explainers import EXPLAINERS, build, explain_all
from xaisec.models import build_model, default_cam_layer, find_head, is_activation

captum = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients",
                                        "ignore:Setting forward, backward hooks")

LIBRARY_MODELS = ["torchvision:resnet18", "timm:resnet18"]


def _model(spec: str, size: int = 32) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(spec, (3, size, size), 5).double().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("spec", LIBRARY_MODELS)
def test_maps_equal_captum_on_library_models(spec):
    model = _model(spec)
    x, y = torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 3])
    assert default_cam_layer(model) == "net.layer4"  # the input of global pooling, not the last conv
    for layer in ("net.layer4", "net.layer3"):
        cap = captum.LayerGradCam(model, model.get_submodule(layer)).attribute(x, y, relu_attributions=True)
        cap = captum.LayerAttribution.interpolate(cap, (32, 32), "bilinear")
        torch.testing.assert_close(build("gradcam", model, layer=layer)(x, y).maps, cap, rtol=1e-9, atol=1e-12)
    sal = captum.Saliency(model).attribute(x, y, abs=True).amax(1, keepdim=True)
    torch.testing.assert_close(build("simplegrad", model)(x, y).maps, sal, rtol=1e-9, atol=1e-12)
    ixg = captum.InputXGradient(model).attribute(x, y).sum(1, keepdim=True)
    torch.testing.assert_close(build("inputxgrad", model)(x, y).maps, ixg, rtol=1e-9, atol=1e-12)
    ig = captum.IntegratedGradients(model).attribute(x, target=y, n_steps=8).sum(1, keepdim=True)
    # ~1e-6 relative: the path points run in another batch composition than Captum's (conv algorithms differ)
    torch.testing.assert_close(build("ig", model, steps=8)(x, y).maps, ig, rtol=1e-5, atol=1e-8)
    # CAM (not in Captum): for global average pooling and a linear head, Grad-CAM's channel weights are
    # W[target] / (h w), and h w = 1 for layer4 at 32 px
    assert isinstance(find_head(model), nn.Linear)
    cam = build("cam", model, relu=True)(x, y).maps
    torch.testing.assert_close(cam, build("gradcam", model)(x, y).maps, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("spec", LIBRARY_MODELS)
def test_every_explainer_works_under_no_grad(spec):
    model = build_model(spec, (3, 32, 32), 5).eval()
    x = torch.rand(2, 3, 32, 32)
    options = {"mask": {"steps": 2}, "ig": {"steps": 4}, "smoothgrad": {"n_samples": 2}, "gradshap": {"n_samples": 2}}
    for name in EXPLAINERS.names():
        if name == "rts":  # needs a trained saver; its own tests cover no_grad
            continue
        explainer = build(name, model, **options.get(name, {}))
        expected = explainer(x, 1).maps
        with torch.no_grad():
            torch.testing.assert_close(explainer(x, 1).maps, expected, msg=name)
    with torch.no_grad():
        joint = explain_all(model, x, 1, ["gradcam", "simplegrad", "vbp"])
    assert all(torch.isfinite(m).all() for m in joint.maps.values())


def test_gradcam_with_functional_in_place_relu_after_the_layer():
    """torchvision's DenseNet applies F.relu(features, inplace=True) right after the default Grad-CAM layer."""
    model = _model("densenet121", 32)
    x, y = torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 4])
    assert default_cam_layer(model) == "net.features"
    features = model.net.features(model.normalize(x))
    logits = model.net.classifier(F.adaptive_avg_pool2d(F.relu(features), 1).flatten(1))
    grads = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), features)[0]
    expected = F.interpolate(F.relu((grads.mean((2, 3), keepdim=True) * features).sum(1, keepdim=True)), (32, 32),
                             mode="bilinear", align_corners=False)
    for create_graph in (False, True):
        maps = build("gradcam", model)(x, y, create_graph=create_graph).maps
        torch.testing.assert_close(maps.detach(), expected.detach(), rtol=1e-9, atol=1e-12)


def test_layers_as_module_objects_and_wrapped_models():
    model = build_model("timm:resnet18", (3, 32, 32), 5).eval()
    x = torch.rand(2, 3, 32, 32)
    expected = build("gradcam", model, layer="net.layer3")(x, 2).maps
    torch.testing.assert_close(build("gradcam", model, layer=model.net.layer3)(x, 2).maps, expected)
    torch.testing.assert_close(build("gradcam", model, layer="layer3")(x, 2).maps, expected)  # timm's own name
    for wrapped in (nn.DataParallel(model), torch.compile(model, backend="eager")):
        torch.testing.assert_close(build("gradcam", wrapped, layer=model.net.layer3)(x, 2).maps, expected)
        torch.testing.assert_close(explain_all(wrapped, x, 2, ["gradcam"], options={"gradcam": {"layer": "layer3"}}
                                               ).maps["gradcam"], expected)


def test_token_models_take_a_layer_and_a_reshape():
    model = build_model("timm:vit_tiny_patch16_224", (3, 32, 32), 5).eval()
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ModelError, match="reshape_transform"):
        build("gradcam", model)
    layer = model.net.blocks[-1].norm1
    maps = build("gradcam", model, layer=layer, reshape_transform="tokens")(x, 1).maps
    assert maps.shape == (2, 1, 32, 32) and torch.isfinite(maps).all() and maps.abs().sum() > 0
    with pytest.raises(ModelError, match="tokens"):
        build("gradcam", model, layer=layer)(x, 1)
    with pytest.raises(ModelError, match="cam needs"):
        build("cam", build_model("timm:convnext_atto", (3, 32, 32), 5))  # LayerNorm between pooling and head


def test_vbp_on_timm_activations():
    from timm.layers.activations import GELU, Swish

    from xaisec.explainers.base import PassRequest, run_pass

    assert is_activation(GELU()) and is_activation(Swish()) and is_activation(nn.ReLU6()) and not is_activation(nn.Linear(1, 1))
    model = build_model("timm:resnet18", (3, 32, 32), 5, act_layer="gelu").double().eval()  # timm's own GELU class
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    trace = run_pass(model, x, None, PassRequest(trace=True), False).trace
    assert sum(e.output is not None for e in trace) == 17  # stem + 2 per block x 8 blocks
    maps = build("vbp", model)(x).maps
    assert maps.shape == (2, 1, 32, 32) and torch.isfinite(maps).all() and (maps > 0).all()
