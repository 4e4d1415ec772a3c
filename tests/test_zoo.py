"""Models by name (torchvision, timm, user code), their specs, weights, devices and surgery on library models."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from xaisec.errors import ConfigError, ModelError
from xaisec.models import (MODELS, PAPER_MODELS, ModelSpec, Normalize, Normalized, autocast, build_model,
                           fold_batchnorm, get_layer, layer_name, model_spec, resolve_device, smooth_activations,
                           unwrap_model)
from xaisec.train import training_mode


def _random_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("spec", ["torchvision:resnet18", "timm:resnet18", "resnet18"])
def test_library_models_fit_the_data_and_take_pixels(spec):
    model = build_model(spec, (1, 32, 32), 7).eval()
    assert isinstance(model, Normalized) and isinstance(model.normalize, Normalize)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 7)
    grey = sum((0.485, 0.456, 0.406)) / 3  # RGB statistics averaged for one channel
    assert model_spec(model).mean == pytest.approx([grey], rel=1e-6)
    rgb = build_model(spec, (3, 32, 32), 4)
    assert model_spec(rgb).mean == pytest.approx([0.485, 0.456, 0.406]) and model_spec(rgb).options == {}


def test_paper_architectures_have_short_names():
    assert {"vgg19", "resnet18", "resnet50", "densenet121", "densenet169", "efficientnet_b0", "resnet20"} <= set(MODELS.names())
    assert PAPER_MODELS["densenet121"] == "torchvision:densenet121"
    assert "timm:efficientnet_b0" in MODELS and "timm:efficientnet_b9" not in MODELS


def test_spec_round_trip_rebuilds_the_model(tmp_path):
    from xaisec.io import save_weights

    model = build_model("timm:resnet18", (3, 32, 32), 5, mean=0.5, std=0.25, drop_rate=0.1).eval()
    spec = model_spec(model)
    assert spec.mean == [0.5] * 3 and spec.options == {"drop_rate": 0.1}
    save_weights(model, tmp_path / "m.safetensors")
    loaded = ModelSpec.load(spec.save(tmp_path / "model.json"))
    assert loaded == spec
    again = loaded.build(tmp_path / "m.safetensors").eval()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(again(x), model(x))
    torch.testing.assert_close(build_model(loaded, (9,), 1, weights=tmp_path / "m.safetensors").eval()(x), model(x))


def test_unknown_library_names_list_the_closest():
    with pytest.raises(ModelError, match="resnet18"):
        build_model("torchvision:resnet19", (3, 32, 32), 10)
    with pytest.raises(ModelError, match="resnet18"):
        MODELS.get("timm:resnet18x")
    with pytest.raises(ModelError, match="resnet50"):
        build_model("resnet51", (3, 32, 32), 10)


def test_user_function_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(num_classes, in_channels, width=4):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(width, num_classes))\n"
        "def not_a_model():\n"
        "    return 42\n")
    (tmp_path / "broken_nets.py").write_text("import no_such_package_here\n")
    monkeypatch.chdir(tmp_path)
    model = build_model("my_nets:tiny", (2, 12, 12), 3, width=5)
    assert model(torch.rand(1, 2, 12, 12)).shape == (1, 3) and model[0].out_channels == 5
    assert model_spec(model).mean is None  # no Normalize added unless asked for
    assert isinstance(build_model("my_nets:tiny", (2, 12, 12), 3, mean=0.5, std=0.5), Normalized)
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        build_model("my_nets:not_a_model", (2, 12, 12), 3)
    with pytest.raises(ModelError, match="'tiny'"):
        build_model("my_nets:tinyy", (2, 12, 12), 3)
    with pytest.raises(ModelError, match="could not import module 'broken_nets'.*no_such_package_here"):
        MODELS.get("broken_nets:build")


def test_library_checkpoints_load_and_mismatches_name_the_keys(tmp_path):
    net = torchvision.models.resnet18(num_classes=1000)
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    model = build_model("resnet18", (3, 32, 32), 1000, weights=tmp_path / "resnet18.pth", allow_pickle=True).eval()
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(model(x), net.eval()(model.normalize(x)))
    with pytest.raises(ModelError, match="allow_pickle"):
        build_model("resnet18", (3, 32, 32), 1000, weights=tmp_path / "resnet18.pth")
    with pytest.raises(ModelError, match=r"fc\.weight.*finetune=True"):
        build_model("resnet18", (3, 32, 32), 10, weights=tmp_path / "resnet18.pth", allow_pickle=True)
    tuned = build_model("resnet18", (1, 32, 32), 10, weights=tmp_path / "resnet18.pth", allow_pickle=True,
                        finetune=True)
    torch.testing.assert_close(tuned.net.conv1.weight, net.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(tuned.net.layer4[1].conv2.weight, net.layer4[1].conv2.weight)
    assert tuned.net.fc.out_features == 10


def test_resolve_device_and_autocast():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(ConfigError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    for bad in ("gpu", "tpu:0", 3):
        with pytest.raises(ConfigError):
            resolve_device(bad)
    model = build_model("small_cnn", (1, 12, 12), 3, width=8).eval()
    with torch.no_grad(), autocast("cpu", "bf16"):
        assert model(torch.rand(2, 1, 12, 12)).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="bf16"):
        with autocast("cpu", "fp16"):
            pass


def test_layers_by_module_object_and_through_wrappers():
    model = build_model("resnet18", (3, 32, 32), 4).eval()
    block = model.net.layer3
    assert get_layer(model, block) is block and get_layer(model, "layer3") is block
    assert layer_name(model, block) == layer_name(model, "net.layer3") == "net.layer3"
    wrapped = nn.DataParallel(torch.compile(model, backend="eager"))
    assert unwrap_model(wrapped) is model and get_layer(wrapped, "module._orig_mod.net.layer3") is block
    with pytest.raises(ModelError, match="not part of the model"):
        get_layer(model, nn.Conv2d(1, 1, 1))


def test_fold_and_frozen_batchnorm_on_torchvision_resnet():
    model = _random_bn(build_model("resnet18", (3, 32, 32), 3)).double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    with fold_batchnorm(model):
        folded = sum("forward" in vars(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        out_f = model(x)
        grads_f = torch.autograd.grad(out_f.square().sum(), list(model.parameters()))
    assert folded == 20  # stem + 2 per block x 8 blocks + 3 projection shortcuts: all of them
    torch.testing.assert_close(out_f, out)
    for g, g_f in zip(grads, grads_f):
        torch.testing.assert_close(g_f, g)
    stats = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with training_mode(model, freeze_batchnorm=True):
        model(x).sum().backward()
    assert all(torch.equal(a, m.running_mean) for a, m in zip(stats, [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]))


def _relu_nodes(t: torch.Tensor) -> list[str]:
    seen, stack, found = set(), [t.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if "Relu" in type(fn).__name__ or "Threshold" in type(fn).__name__:
            found.append(type(fn).__name__)
        stack += [f for f, _ in fn.next_functions]
    return found


@pytest.mark.parametrize("spec", ["resnet18", "densenet121"])
def test_smooth_activations_reach_functional_relus(spec):
    model = build_model(spec, (3, 32, 32), 3).eval()
    x = torch.rand(1, 3, 32, 32)
    assert _relu_nodes(model(x))  # torchvision: in-place nn.ReLU modules and (DenseNet) F.relu(inplace=True)
    with smooth_activations(model, beta=8.0):
        assert _relu_nodes(model(x)) == []
        # only the model's forward is smoothed: a ReLU outside it (an explainer's, on its map) stays a ReLU
        assert torch.relu(-torch.ones(1)).item() == 0 and nn.functional.relu_(-torch.ones(1)).item() == 0
    assert _relu_nodes(model(x)) and torch.relu(-torch.ones(1)).item() == 0


def test_second_order_gradient_on_smoothed_torchvision_resnet_matches_finite_differences():
    """The parameter gradient of a loss on a saliency map (second order) of a softplus-swapped torchvision ResNet-18."""
    from xaisec.explainers import build

    torch.manual_seed(0)
    model = _random_bn(build_model("resnet18", (3, 16, 16), 3)).double()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 2])
    params = [p for n, p in model.named_parameters() if n.endswith(("conv1.weight", "fc.weight", "layer3.0.bn1.weight"))]
    direction = [torch.randn_like(p) for p in params]

    def loss() -> torch.Tensor:
        with smooth_activations(model, beta=8.0):
            return build("simplegrad", model)(x, y, create_graph=True).maps.square().mean()

    analytic = sum((g * d).sum() for g, d in zip(torch.autograd.grad(loss(), params), direction))
    eps = 1e-5
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
        up = loss()
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
        down = loss()
        for p, d in zip(params, direction):
            p.add_(eps * d)
    numeric = (up - down) / (2 * eps)
    assert analytic.abs() > 1e-8
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-10)
