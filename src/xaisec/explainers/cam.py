"""Class-activation explainers: Grad-CAM, Grad-CAM++ and CAM, at a layer given by name or module object.

The default layer is the input of the model's global pooling (:func:`xaisec.models.default_cam_layer`); token
models (ViTs) take a layer and ``reshape_transform="tokens"`` (or any callable ``(B,N,C) -> (B,C,h,w)``).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..models import default_cam_layer, find_head, layer_name, tokens_to_grid
from .base import EXPLAINERS, PassRequest, PassResult, SinglePassExplainer, upsample


ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]


class _LayerExplainer(SinglePassExplainer):
    """Shared set-up: ``layer`` (a name or module object; default: the input of global pooling) must exist; its
    output, after ``reshape_transform`` (``"tokens"``: :func:`xaisec.models.tokens_to_grid`), is (B,C,h,w)."""

    needs_images = True

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, relu: bool = True,
                 reshape_transform: str | ReshapeTransform | None = None):
        super().__init__(model)
        # the canonical name: fails now, with suggestions, not at the first call
        self.layer = layer_name(model, default_cam_layer(model) if layer is None else layer)
        if reshape_transform == "tokens":
            reshape_transform = tokens_to_grid
        elif reshape_transform is not None and not callable(reshape_transform):
            raise ModelError(f"reshape_transform must be 'tokens', a callable (B,N,C) -> (B,C,h,w) or None, "
                             f"got {reshape_transform!r}")
        self.reshape_transform = reshape_transform
        self.relu = relu

    def request(self) -> PassRequest:
        return PassRequest(layers={self.layer}, layer_grads=True)

    def _reshaped(self, t: torch.Tensor) -> torch.Tensor:
        t = t if self.reshape_transform is None else self.reshape_transform(t)
        if t.dim() != 4:
            raise ModelError(f"layer {self.layer!r} outputs shape {tuple(t.shape)}; CAM methods need a (B,C,h,w) "
                             "feature map: pick a convolutional layer, or for tokens (B,N,C) pass "
                             "reshape_transform='tokens'")
        return t

    def _activations(self, result: PassResult) -> torch.Tensor:
        return self._reshaped(result.layer_outputs[self.layer])

    def _gradients(self, result: PassResult) -> torch.Tensor:
        return self._reshaped(result.layer_grads[self.layer])

    def _finish(self, cam: torch.Tensor, result: PassResult) -> torch.Tensor:
        return upsample(F.relu(cam) if self.relu else cam, tuple(result.x.shape[-2:]))


@EXPLAINERS.register()
class GradCAM(_LayerExplainer):
    """Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391): ReLU(sum_c w_c A_c) with
    w_c the spatial mean of d logit_target / d A_c, bilinearly upsampled (align_corners=False)."""

    name = "gradcam"
    attackable = True

    def maps_from(self, result: PassResult) -> torch.Tensor:
        a, g = self._activations(result), self._gradients(result)
        weights = g.mean((2, 3), keepdim=True)
        return self._finish((weights * a).sum(1, keepdim=True), result)


@EXPLAINERS.register()
class GradCAMPlusPlus(_LayerExplainer):
    """Grad-CAM++ (Chattopadhyay et al. 2018, https://arxiv.org/abs/1710.11063), closed form for an
    exponential score: alpha = g^2 / (2 g^2 + sum(A) g^3), w_c = sum alpha ReLU(g)."""

    name = "gradcampp"

    def maps_from(self, result: PassResult) -> torch.Tensor:
        a, g = self._activations(result), self._gradients(result)
        g2, g3 = g.pow(2), g.pow(3)
        denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        weights = (alpha * F.relu(g)).sum((2, 3), keepdim=True)
        return self._finish((weights * a).sum(1, keepdim=True), result)


@EXPLAINERS.register()
class CAM(_LayerExplainer):
    """CAM (Zhou et al. 2016, https://arxiv.org/abs/1512.04150): sum_c W[target, c] A_c for models whose
    ``layer`` feeds global average pooling and one linear layer (``model.head`` or the linear layer found right
    after the pooling, :func:`xaisec.models.find_head`). Needs no backward pass."""

    name = "cam"
    attackable = True

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, relu: bool = False,
                 reshape_transform: str | ReshapeTransform | None = None):
        super().__init__(model, layer, relu, reshape_transform)
        head = find_head(model)
        if not isinstance(head, nn.Linear):
            raise ModelError(f"cam needs a model whose global average pooling feeds one linear layer; "
                             f"{type(model).__name__} has none (something else is between, or no pooling). "
                             "Use 'gradcam' instead")
        self.head = head

    def request(self) -> PassRequest:
        return PassRequest(layers={self.layer})

    def maps_from(self, result: PassResult) -> torch.Tensor:
        a = self._activations(result)
        if a.shape[1] != self.head.in_features:
            raise ModelError(f"layer {self.layer!r} has {a.shape[1]} channels but the head takes "
                             f"{self.head.in_features} features; CAM needs the layer right before global pooling")
        w = self.head.weight[result.target]  # (B,C)
        return self._finish(torch.einsum("bc,bchw->bhw", w, a).unsqueeze(1), result)
