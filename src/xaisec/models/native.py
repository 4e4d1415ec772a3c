"""xaisec's own small architectures (the papers' MNIST/CIFAR/tabular models).

Every model takes pixels in [0,1]: its first layer is :class:`Normalize`. Convolutional models
end with global average pooling + one linear layer, so CAM applies; ``model.cam_layer`` names
the layer whose output CAM and Grad-CAM use by default, ``model.head`` is the final linear layer.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ModelError
from .registry import MODELS


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (or per feature for ``(B,F)`` inputs)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t, std_t = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if (std_t <= 0).any():
            raise ModelError(f"Normalize std must be positive, got {std}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
        return (x - self.mean.view(shape)) / self.std.view(shape)


def _stats(values: Sequence[float] | float | None, channels: int, default: float) -> list[float]:
    if values is None:
        return [default] * channels
    if isinstance(values, (int, float)):
        return [float(values)] * channels
    values = [float(v) for v in values]
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ModelError(f"normalisation has {len(values)} values but the model has {channels} input channels")
    return values


class ConvNet(nn.Module):
    """A convolutional body, global average pooling and a linear head (CAM-compatible)."""

    def __init__(self, normalize: Normalize, features: nn.Sequential, width: int, num_classes: int):
        super().__init__()
        self.normalize = normalize
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)
        self.cam_layer = "features"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(self.normalize(x))).flatten(1))


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose 2x2/stride-2 case, when no gradient is recorded, is the element-wise maximum of the
    four strided sub-grids: the same values, 5-10x faster than this CPU build's ``max_pool2d`` (which computes
    argmax indices even under ``no_grad``). With autograd on it is exactly ``nn.MaxPool2d`` (same gradients)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = (self.kernel_size in (2, (2, 2)) and self.stride in (2, (2, 2)) and self.padding in (0, (0, 0))
                 and self.dilation in (1, (1, 1)) and not self.ceil_mode and not self.return_indices)
        if not plain or (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
        return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                             torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


def _conv_relu(c_in: int, c_out: int, batchnorm: bool, stride: int = 1) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU())
    return layers


@MODELS.register("small_cnn")
def small_cnn(in_channels: int = 1, num_classes: int = 10, mean=None, std=None, width: int = 32,
              batchnorm: bool = True) -> ConvNet:
    """Three 3x3 conv(+BN)+ReLU layers, one 2x2 max-pool, for 28x28 digits; CAM maps at half resolution (~25k parameters)."""
    layers = [*_conv_relu(in_channels, width // 2, batchnorm), MaxPool2d(2),
              *_conv_relu(width // 2, width, batchnorm), *_conv_relu(width, 2 * width, batchnorm)]
    return ConvNet(Normalize(_stats(mean, in_channels, 0.5), _stats(std, in_channels, 0.5)),
                   nn.Sequential(*layers), 2 * width, num_classes)


@MODELS.register("vgg_small")
def vgg_small(in_channels: int = 3, num_classes: int = 10, mean=None, std=None,
              widths: Sequence[int] = (32, 64, 128), batchnorm: bool = True) -> ConvNet:
    """VGG-style: per stage two 3x3 conv+BN+ReLU then 2x2 max-pool (the last stage unpooled)."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for i, w in enumerate(widths):
        layers += _conv_relu(c_in, w, batchnorm) + _conv_relu(w, w, batchnorm)
        if i < len(widths) - 1:
            layers.append(MaxPool2d(2))
        c_in = w
    return ConvNet(Normalize(_stats(mean, in_channels, 0.5), _stats(std, in_channels, 0.5)),
                   nn.Sequential(*layers), c_in, num_classes)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016) with a 1x1-conv projection shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        self.conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))  # for fold_batchnorm
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


@MODELS.register("resnet20")
def resnet20(in_channels: int = 3, num_classes: int = 10, mean=None, std=None, width: int = 16,
             blocks_per_stage: int = 3) -> ConvNet:
    """CIFAR-style ResNet-20 (3 stages x 3 basic blocks, widths 16/32/64), https://arxiv.org/abs/1512.03385."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    c_in = width
    for stage in range(3):
        c_out = width * 2**stage
        for block in range(blocks_per_stage):
            layers.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and block == 0 else 1))
            c_in = c_out
    return ConvNet(Normalize(_stats(mean, in_channels, 0.5), _stats(std, in_channels, 0.25)),
                   nn.Sequential(*layers), c_in, num_classes)


class MLP(nn.Module):
    """Fully connected classifier for tabular features ``(B,F)`` (Fang's credit-default example)."""

    def __init__(self, normalize: Normalize, sizes: Sequence[int], num_classes: int):
        super().__init__()
        self.normalize = normalize
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.normalize(x.flatten(1))))


@MODELS.register("mlp")
def mlp(in_features: int = 784, num_classes: int = 10, mean=None, std=None, hidden: Sequence[int] = (128, 64),
        in_channels: int | None = None) -> MLP:
    """MLP with ReLU hidden layers; ``mean``/``std`` are per feature."""
    sizes = [in_features, *hidden]
    return MLP(Normalize(_stats(mean, in_features, 0.0), _stats(std, in_features, 1.0)), sizes, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
