"""Architectures, the input normalisation layer and the ReLU <-> Softplus swap."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xaisec.errors import ModelError, XaisecError
from xaisec.models import MODELS, Normalize, build_model, default_cam_layer, get_layer, smooth_activations


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
