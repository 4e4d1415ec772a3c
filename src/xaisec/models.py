"""Small architectures used across the papers' experiments, plus the activation swap.

Every model takes pixels in [0,1]: its first layer is :class:`Normalize`. Convolutional models
end with global average pooling + one linear layer, so CAM applies; ``model.cam_layer`` names
the layer whose output CAM and Grad-CAM use by default, ``model.head`` is the final linear layer.
"""
from __future__ import annotations

import contextlib
import difflib
from typing import Iterator, Sequence

import torch
from torch import nn

from .errors import ModelError
from .registry import Registry

MODELS = Registry("model")


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


def build_model(name: str, input_shape: Sequence[int], num_classes: int, **options) -> nn.Module:
    """Build a registered architecture for inputs of ``input_shape`` (``(C,H,W)`` or ``(F,)``)."""
    factory = MODELS.get(name)
    if factory is mlp:
        features = 1
        for s in input_shape:
            features *= int(s)
        return factory(in_features=features, num_classes=num_classes, **options)
    if len(input_shape) != 3:
        raise ModelError(f"model {name!r} needs image inputs (C,H,W), the data has shape {tuple(input_shape)}; use 'mlp' for tabular data")
    return factory(in_channels=int(input_shape[0]), num_classes=num_classes, **options)


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (as in ``model.named_modules()``), with suggestions if unknown."""
    modules = dict(model.named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, list(modules), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise ModelError(f"the model has no layer {name!r}.{hint} Its conv layers are: {', '.join(convs) or 'none'}")
    return modules[name]


def default_cam_layer(model: nn.Module) -> str:
    """The layer CAM methods use by default: ``model.cam_layer`` or else the last Conv2d."""
    name = getattr(model, "cam_layer", None)
    if isinstance(name, str):
        return name
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError(f"{type(model).__name__} has no Conv2d layer, so CAM-style explainers do not apply; "
                         "use a gradient explainer such as 'simplegrad' or 'ig'")
    return convs[-1]


def _replace_modules(model: nn.Module, kind: type, make) -> list[tuple[nn.Module, str, nn.Module]]:
    swapped = []
    for parent in model.modules():
        for child_name, child in list(parent.named_children()):
            if type(child) is kind:
                parent._modules[child_name] = make(child)
                swapped.append((parent, child_name, child))
    return swapped


@contextlib.contextmanager
def smooth_activations(model: nn.Module, beta: float = 8.0) -> Iterator[nn.Module]:
    """Swap every ``nn.ReLU`` for ``nn.Softplus(beta)`` inside the block, then restore the originals.

    ReLU has zero second derivative, so losses on gradient maps need a smooth surrogate while training
    (Dombrowski et al. 2019; Noppel et al. use beta=8). Evaluation always uses the restored ReLU model.
    """
    if beta <= 0:
        raise ModelError(f"softplus beta must be positive, got {beta}")
    swapped = _replace_modules(model, nn.ReLU, lambda _: nn.Softplus(beta=beta))
    try:
        yield model
    finally:
        for parent, child_name, original in swapped:
            parent._modules[child_name] = original


def _conv_bn_pairs(model: nn.Module) -> Iterator[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """``(conv name, conv, bn)`` for every Conv2d whose output goes only into the BatchNorm2d after it: consecutive
    children of an ``nn.Sequential``, or pairs a module declares in ``conv_bn_pairs`` (as :class:`BasicBlock`)."""
    for prefix, parent in model.named_modules():
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            pairs = zip(names, names[1:])
        else:
            pairs = getattr(parent, "conv_bn_pairs", ())
        for conv_name, bn_name in pairs:
            conv, bn = parent._modules[conv_name], parent._modules[bn_name]
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d:
                yield (f"{prefix}.{conv_name}" if prefix else conv_name), conv, bn


def _hooked(conv: nn.Conv2d) -> bool:
    """Whether a hook watches ``conv`` now: its output must then be the conv's own, not the normalised one."""
    return bool(conv._forward_hooks or conv._forward_pre_hooks)


def _folded_forward(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if _hooked(conv):
            return conv._conv_forward(x, conv.weight, conv.bias)
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = bn.weight * scale
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        return conv._conv_forward(x, conv.weight * scale.view(-1, 1, 1, 1), shift)
    return forward


def _folded_batchnorm_forward(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return type(bn).forward(bn, x) if _hooked(conv) else x
    return forward


@contextlib.contextmanager
def fold_batchnorm(model: nn.Module, keep: Sequence[str] = ()) -> Iterator[nn.Module]:
    """Inside the block, every eval-mode BatchNorm2d that directly follows a Conv2d is folded into the conv.

    The conv computes ``conv(x, W·s) + (b - μ)·s + β`` with ``s = γ/sqrt(σ² + eps)`` and the BatchNorm passes its
    input through: the same outputs and the same gradients for ``W``, ``γ``, ``β`` (the folding is differentiable),
    without a BatchNorm pass over the activations. In explanation-aware training, where eval-mode BatchNorm's
    second derivative costs as much as a convolution, that saves about a quarter of a simplegrad step
    (``benchmarks/training.py``); an ADV2 step on a BatchNorm model saves as much (``benchmarks/adv2.py``).
    BatchNorm in train mode is left alone (its batch statistics are not a per-channel affine map), and so is every
    conv named in ``keep``, or watched by a forward hook when it runs (a hook registered inside the block, as
    explainers do, sees the conv's own output). Modules are restored on exit.
    """
    patched = []
    for name, conv, bn in _conv_bn_pairs(model):
        if bn.training or bn.running_mean is None or name in keep or "forward" in vars(conv) or "forward" in vars(bn):
            continue
        conv.forward, bn.forward = _folded_forward(conv, bn), _folded_batchnorm_forward(conv, bn)
        patched += [conv, bn]
    try:
        yield model
    finally:
        for module in patched:
            del module.forward


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
