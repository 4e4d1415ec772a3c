"""VisualBackProp (Bojarski et al. 2018, https://arxiv.org/abs/1611.05418)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .base import EXPLAINERS, PassRequest, PassResult, SinglePassExplainer, TraceEvent, upsample


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _geometry(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, padding, dilation) of a conv or pooling layer."""
    if isinstance(module, nn.Conv2d):
        return _pair(module.kernel_size), _pair(module.stride), _pair(module.padding), _pair(module.dilation)
    kernel = _pair(module.kernel_size)
    stride = _pair(module.stride) if module.stride is not None else kernel
    dilation = _pair(getattr(module, "dilation", 1))
    return kernel, stride, _pair(module.padding), dilation


def _ones_deconv(mask: torch.Tensor, op: TraceEvent) -> torch.Tensor:
    """Upscale ``mask`` (B,1,h,w) from ``op``'s output size to its input size with an all-ones transposed conv."""
    kernel, stride, padding, dilation = _geometry(op.module)
    if isinstance(op.module.padding, str):  # 'same'/'valid' convs: keep the size chain by interpolation
        return upsample(mask, op.in_hw)
    extra = [op.in_hw[i] - ((mask.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1)
             for i in range(2)]
    if not all(0 <= e < max(stride[i], dilation[i]) for i, e in enumerate(extra)):
        return upsample(mask, op.in_hw)
    ones = torch.ones(1, 1, *kernel, dtype=mask.dtype, device=mask.device)
    return F.conv_transpose2d(mask, ones, stride=stride, padding=padding, output_padding=tuple(extra), dilation=dilation)


def _upscale(mask: torch.Tensor, ops: list[TraceEvent], target_hw: tuple[int, int]) -> torch.Tensor:
    """Walk back through the spatial ops between two activations. Ops whose input is larger than the
    shallower map (e.g. a ResNet projection shortcut) are off the main path and skipped."""
    for op in reversed(ops):
        cur = tuple(mask.shape[-2:])
        if op.out_hw == cur and op.in_hw[0] <= target_hw[0] and op.in_hw[1] <= target_hw[1]:
            mask = _ones_deconv(mask, op)
    return upsample(mask, target_hw)


@EXPLAINERS.register()
class VisualBackProp(SinglePassExplainer):
    """Channel-averaged activation maps multiplied from the deepest to the shallowest conv stage, each deeper
    mask upscaled by all-ones transposed convolutions with the geometry of the layers in between.

    Built from ordinary tensor ops on the recorded activations, so it is differentiable (train against it
    with ``create_graph=True``). Raw output: normalise with :mod:`xaisec.maps` (the paper scales to [0,1]).
    ``reduce="sum"`` follows the original Lua code, ``"mean"`` (default) the paper.
    """

    name = "vbp"
    needs_images = True

    def __init__(self, model: nn.Module, reduce: str = "mean"):
        super().__init__(model)
        if reduce not in ("mean", "sum"):
            raise ModelError(f"vbp reduce must be 'mean' or 'sum', got {reduce!r}")
        self.reduce = reduce

    def request(self) -> PassRequest:
        return PassRequest(trace=True)

    def maps_from(self, result: PassResult) -> torch.Tensor:
        stages: list[tuple[torch.Tensor, list[TraceEvent]]] = []  # (activation, spatial ops before it)
        pending: list[TraceEvent] = []
        for event in result.trace:
            if event.output is None:
                pending.append(event)
            elif event.output.dim() == 4 and event.output.shape[-2] * event.output.shape[-1] > 1:
                # 1x1 activations (squeeze-excitation gates, a final 1x1 stage) carry no spatial information
                stages.append((event.output, pending))
                pending = []
        if not stages:
            raise ModelError("vbp needs a convolutional model with activation modules (nn.ReLU, ...) on feature maps; "
                             "this model has none. Use a gradient explainer such as 'simplegrad'")
        reduce = torch.mean if self.reduce == "mean" else torch.sum
        mask = None
        for i in range(len(stages) - 1, -1, -1):
            act = reduce(stages[i][0], dim=1, keepdim=True)
            mask = act if mask is None else _upscale(mask, stages[i + 1][1], tuple(act.shape[-2:])) * act
        return _upscale(mask, stages[0][1], tuple(result.x.shape[-2:]))
