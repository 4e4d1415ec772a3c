"""Shared fixtures: tiny models (eval mode) and inputs; everything CPU and seconds."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import tiny_backdoor
from xaisec.explainers import FeatureSaliencyNet, build
from xaisec.models import build_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _tiny_cnn(dtype=torch.float32, in_channels: int = 1, num_classes: int = 4, batchnorm: bool = False) -> nn.Module:
    model = build_model("small_cnn", (in_channels, 12, 12), num_classes, width=8, batchnorm=batchnorm)
    return model.to(dtype).eval()


@pytest.fixture(scope="session")
def tiny_cnn():
    """Factory ``tiny_cnn(dtype=torch.float32, in_channels=1, num_classes=4, batchnorm=False)`` of small_cnn models
    with 4/8 channels on 12x12 inputs (eval mode): fast, smooth enough for finite differences, all code paths of a
    ConvNet."""
    return _tiny_cnn


@pytest.fixture
def cnn(tiny_cnn):
    return tiny_cnn()


@pytest.fixture
def resnet():
    return build_model("resnet20", (3, 16, 16), 5, width=4, blocks_per_stage=1).eval()


@pytest.fixture
def images():
    return torch.rand(5, 1, 12, 12)


_FAST_EXPLAINERS = {"ig": {"steps": 8}, "smoothgrad": {"n_samples": 4}, "gradshap": {"n_samples": 6},
                    "mask": {"steps": 4, "unroll": 1, "l1": 0.0}}


def _untrained_saver(model: nn.Module) -> nn.Module:
    """An (untrained) RTS saliency model that fits ``model``: the rts explainer needs one."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return FeatureSaliencyNet.for_classifier(model, (conv.in_channels, 16, 16), model.head.out_features, width=4)


def _fast_explainer(name: str, model: nn.Module, **kw):
    if name == "rts":
        kw.setdefault("saver", _untrained_saver(model))
    return build(name, model, **{**_FAST_EXPLAINERS.get(name, {}), **kw})


@pytest.fixture(scope="session")
def make_explainer():
    """Factory ``make_explainer(name, model, **options)``: the registered explainer with few steps/samples (an
    untrained saver for ``rts``), so a test explains in milliseconds."""
    return _fast_explainer


# -- the tiny clean and backdoored 14x14 digit models of tests/tiny_backdoor.py (also `xaisec audit --model` entry
# points there) ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def small_mnist():
    """``(x_train (1500,1,14,14), y_train, x_test (300,1,14,14), y_test)``: mnist5k digits average-pooled to 14x14."""
    return tiny_backdoor.small_mnist()


@pytest.fixture(scope="session")
def tiny_model():
    """Factory ``tiny_model(backdoor, batchnorm=True)``: a fresh copy (eval mode) of the clean or BadNets-backdoored
    small_cnn on :func:`small_mnist`, each trained once per session."""
    return tiny_backdoor.tiny_model


@pytest.fixture(scope="session")
def stamp():
    """The tiny backdoor's trigger: ``stamp(x)`` is a copy of ``x`` with a white 3x3 patch near the bottom-right."""
    return tiny_backdoor.stamp


@pytest.fixture(scope="session")
def backdoor_target() -> int:
    """The class the tiny backdoored model gives stamped inputs."""
    return tiny_backdoor.TARGET


class _HiddenNet(nn.Module):
    """The hidden layer is the last child, so ART's PyTorchClassifier takes it as the last hidden layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(24, 3)
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(32, 24), nn.ReLU())

    def forward(self, x):
        return self.head(self.features(x))


def _clustered_inputs(n: int, poison_fraction: float, strength: float):
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 3
    x = (torch.randn(3, 32, generator=g) * 2)[y] + torch.randn(n, 32, generator=g)
    is_poisoned = torch.rand(n, generator=g) < poison_fraction
    x[is_poisoned] += strength * torch.randn(32, generator=g).abs()
    return _HiddenNet().eval(), x.view(n, 1, 4, 8), y, is_poisoned


@pytest.fixture(scope="session")
def clustered_inputs():
    """Factory ``clustered_inputs(n, poison_fraction, strength)`` -> ``(model, x (n,1,4,8), y, is_poisoned)``: 3
    classes; poisoned inputs carry a strong shared offset. The data of the poison detectors that read hidden
    activations (activation clustering, spectral signatures)."""
    return _clustered_inputs


def quadrant_data(n: int = 320, seed: int = 0):
    """(x (n,1,12,12) in [0,1], y (n,)): class k = a bright 3x3 square in quadrant k on uniform noise."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    top = (y // 2) * 6 + torch.randint(0, 3, (n,), generator=gen)
    left = (y % 2) * 6 + torch.randint(0, 3, (n,), generator=gen)
    rows, cols = torch.arange(12)[None, :, None], torch.arange(12)[None, None, :]
    square = ((rows >= top[:, None, None]) & (rows < top[:, None, None] + 3)
              & (cols >= left[:, None, None]) & (cols < left[:, None, None] + 3))
    x = 0.3 * torch.rand(n, 1, 12, 12, generator=gen) + 0.6 * square[:, None].float()
    return x.clamp(0, 1), y


@pytest.fixture(scope="session")
def quadrant_model():
    """A tiny CNN trained (about a second) on :func:`quadrant_data`; returns (model in eval mode, x_test, y_test)."""
    from xaisec.train import train_classifier

    x, y = quadrant_data()
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 12, 12), 4, width=8, batchnorm=False)
    train_classifier(model, x[:256], y[:256], epochs=20, lr=1e-2, batch_size=32, progress=False)
    return model.eval(), x[256:], y[256:]


@pytest.fixture(scope="session")
def quadrants_dataset() -> str:
    """The registered name of a tiny dataset from :func:`quadrant_data` (256 training, 64 test images, 4 classes)."""
    from xaisec.data import DATASETS, ImageDataset

    name = "quadrants_test"
    if name not in DATASETS:
        def load() -> ImageDataset:
            x, y = quadrant_data(320, 0)
            return ImageDataset("quadrants", x[:256], y[:256], x[256:], y[256:], num_classes=4)

        DATASETS.register(name)(load)
    return name


@pytest.fixture(scope="session")
def tiny_backdoor_runs(tmp_path_factory):
    """Two finished tiny backdoor runs (packaged ``default`` = Fang targeted on small_cnn with the Moiré trigger, and
    ``latka_badnets`` on vgg_small with a patch; 300 training / 100 test images, one epoch each): their run
    directories, made once per session through the runner."""
    from xaisec.config import merge, parse_overrides, read_yaml, resolve_config
    from xaisec.runs import load_experiment, run_experiment

    root = tmp_path_factory.mktemp("backdoor_runs")
    tiny = ["data.train_size=300", "data.test_size=100", "reference.epochs=1", "attack.epochs=1",
            "stopping.monitor_size=32", "eval.samples=2"]
    paths = []
    for name in ("default", "latka_badnets"):
        _, cfg = load_experiment(merge(read_yaml(resolve_config(name)), parse_overrides(tiny)))
        paths.append(run_experiment(cfg, root / name, progress=False).path)
    return paths

