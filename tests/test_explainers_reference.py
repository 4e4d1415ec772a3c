"""xaisec's explainers against Captum, finite differences and a hand-written VisualBackProp."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xaisec.explainers import EXPLAINERS, build, explain_all
from xaisec.models import build_model, smooth_activations

captum = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


def _double_models(tiny_cnn):
    torch.manual_seed(1)
    cnn = tiny_cnn(torch.float64, in_channels=3)
    res = build_model("resnet20", (3, 16, 16), 5, width=4, blocks_per_stage=1).double().eval()
    for m in res.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return [(cnn, torch.rand(4, 3, 12, 12, dtype=torch.float64)), (res, torch.rand(4, 3, 16, 16, dtype=torch.float64))]


@pytest.mark.parametrize("case", range(2))
def test_against_captum(case, tiny_cnn):
    model, x = _double_models(tiny_cnn)[case]
    y = torch.tensor([0, 1, 2, 3])
    cap = captum.LayerGradCam(model, model.features).attribute(x, y, relu_attributions=True,
                                                               grad_kwargs={"create_graph": True})
    cap = captum.LayerAttribution.interpolate(cap, tuple(x.shape[-2:]), "bilinear")
    torch.testing.assert_close(build("gradcam", model)(x, y, create_graph=True).maps, cap, rtol=1e-9, atol=1e-12)
    # without a graph the layers before the recorded one run without autograd: same maps, also on inner layers
    torch.testing.assert_close(build("gradcam", model)(x, y).maps, cap, rtol=1e-9, atol=1e-12)
    inner = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][1]
    cap_inner = captum.LayerGradCam(model, model.get_submodule(inner)).attribute(x, y, relu_attributions=True)
    cap_inner = captum.LayerAttribution.interpolate(cap_inner, tuple(x.shape[-2:]), "bilinear")
    joint = explain_all(model, x, y, ["gradcam", "gradcampp"], options={"gradcam": {"layer": inner}})
    torch.testing.assert_close(joint.maps["gradcam"], cap_inner, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(joint.maps["gradcampp"], build("gradcampp", model)(x, y, create_graph=True).maps.detach(),
                               rtol=1e-9, atol=1e-12)

    sal = captum.Saliency(model).attribute(x, y, abs=True).amax(1, keepdim=True)
    torch.testing.assert_close(build("simplegrad", model)(x, y).maps, sal, rtol=1e-9, atol=1e-12)

    ixg = captum.InputXGradient(model).attribute(x, y).sum(1, keepdim=True)
    torch.testing.assert_close(build("inputxgrad", model)(x, y).maps, ixg, rtol=1e-9, atol=1e-12)

    for method in ("gausslegendre", "riemann_left", "riemann_middle", "riemann_right"):
        ig = captum.IntegratedGradients(model).attribute(x, target=y, n_steps=20, method=method).sum(1, keepdim=True)
        ours = build("ig", model, steps=20, method=method)(x, y).maps
        torch.testing.assert_close(ours, ig, rtol=1e-8, atol=1e-10)


FD_OPTIONS = {"ig": {"steps": 6}, "smoothgrad": {"n_samples": 3}, "gradshap": {"n_samples": 5}}


@pytest.mark.parametrize("name", [n for n in EXPLAINERS.names() if EXPLAINERS.get(n).differentiable])
def test_second_order_gradients_match_finite_differences(name, tiny_cnn):
    """d/dtheta sum(maps * R) from create_graph=True equals central differences, on a Softplus model in float64."""
    torch.manual_seed(3)
    model = tiny_cnn(torch.float64)
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    target = torch.tensor([1, 2])
    explainer = build(name, model, **FD_OPTIONS.get(name, {}))
    with smooth_activations(model, beta=4.0):
        weight = model.features[3].weight  # the second conv: between two smooth activations
        R = torch.randn(2, 1, 12, 12, dtype=torch.float64)

        def objective():
            return (explainer(x, target, create_graph=True).maps * R).sum()

        (grad,) = torch.autograd.grad(objective(), weight)
        gen = torch.Generator().manual_seed(0)
        picks = torch.randperm(weight.numel(), generator=gen)[:6]
        eps = 1e-6
        for flat in picks.tolist():
            idx = torch.unravel_index(torch.tensor(flat), weight.shape)
            with torch.no_grad():
                weight[idx] += eps
            up = objective().item()
            with torch.no_grad():
                weight[idx] -= 2 * eps
            down = objective().item()
            with torch.no_grad():
                weight[idx] += eps
            fd = (up - down) / (2 * eps)
            assert grad[idx].item() == pytest.approx(fd, rel=1e-4, abs=1e-8), (name, idx)


def test_maps_are_differentiable_in_the_input(tiny_cnn):
    model = tiny_cnn(torch.float64)
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64, requires_grad=True)
    with smooth_activations(model, beta=4.0):
        for name, options in (("simplegrad", {}), ("gradcam", {"relu": False}), ("vbp", {})):
            maps = build(name, model, **options)(x, 0, create_graph=True).maps
            (g,) = torch.autograd.grad(maps.pow(2).sum(), x)
            assert torch.isfinite(g).all() and g.abs().sum() > 0, name


class PlainNet(nn.Module):
    """Conv/ReLU stack without padding or pooling, as in VisualBackProp's original network."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(2, 4, 5, stride=2), nn.Conv2d(4, 6, 3, stride=2), nn.Conv2d(6, 5, 3)])
        self.relus = nn.ModuleList([nn.ReLU() for _ in self.convs])
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        for conv, relu in zip(self.convs, self.relus):
            x = relu(conv(x))
        return self.head(x.mean((2, 3)))


def vbp_reference(net: PlainNet, image: torch.Tensor) -> torch.Tensor:
    """VisualBackProp for one image (C,H,W), written out step by step."""
    acts, h = [], image[None]
    sizes = [tuple(h.shape[-2:])]
    for conv, relu in zip(net.convs, net.relus):
        h = relu(conv(h))
        acts.append(h.mean(1, keepdim=True))
        sizes.append(tuple(h.shape[-2:]))
    mask = acts[-1]
    for i in range(len(acts) - 1, -1, -1):
        conv = net.convs[i]
        k, s = conv.kernel_size[0], conv.stride[0]
        out_size = sizes[i]
        natural = (mask.shape[-1] - 1) * s + k
        mask = F.conv_transpose2d(mask, torch.ones(1, 1, k, k, dtype=mask.dtype), stride=s,
                                  output_padding=out_size[-1] - natural)
        if i > 0:
            mask = mask * acts[i - 1]
    return mask[0]


def test_vbp_matches_reference():
    torch.manual_seed(0)
    net = PlainNet().double().eval()
    x = torch.rand(3, 2, 24, 24, dtype=torch.float64)
    ours = build("vbp", net)(x).maps
    ref = torch.stack([vbp_reference(net, img) for img in x])
    torch.testing.assert_close(ours, ref.detach())
