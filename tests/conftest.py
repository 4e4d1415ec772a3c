"""Shared fixtures: tiny models (eval mode) and inputs; everything CPU and seconds."""
from __future__ import annotations

import pytest
import torch

from xaisec.models import build_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_cnn(dtype=torch.float32, in_channels: int = 1, num_classes: int = 4, batchnorm: bool = False):
    """A small_cnn with 4/8 channels: fast, smooth enough for finite differences, all code paths of a ConvNet."""
    model = build_model("small_cnn", (in_channels, 12, 12), num_classes, width=8, batchnorm=batchnorm)
    return model.to(dtype).eval()


@pytest.fixture
def cnn():
    return tiny_cnn()


@pytest.fixture
def resnet():
    return build_model("resnet20", (3, 16, 16), 5, width=4, blocks_per_stage=1).eval()


@pytest.fixture
def images():
    return torch.rand(5, 1, 12, 12)


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
