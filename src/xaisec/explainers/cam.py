"""Class-activation explainers: Grad-CAM, Grad-CAM++ and CAM, all at a named conv layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..models import default_cam_layer, get_layer
from .base import PassRequest, PassResult, SinglePassExplainer, upsample


class _LayerExplainer(SinglePassExplainer):
    """Shared set-up: the layer (default ``model.cam_layer`` or the last Conv2d) must exist."""

    needs_images = True

    def __init__(self, model: nn.Module, layer: str | None = None, relu: bool = True):
        super().__init__(model)
        self.layer = layer or default_cam_layer(model)
        get_layer(model, self.layer)  # fail now, with suggestions, not at the first call
        self.relu = relu

    def request(self) -> PassRequest:
        return PassRequest(layers={self.layer}, layer_grads=True)

    def _activations(self, result: PassResult) -> torch.Tensor:
        a = result.layer_outputs[self.layer]
        if a.dim() != 4:
            raise ModelError(f"layer {self.layer!r} outputs shape {tuple(a.shape)}; CAM methods need a (B,C,h,w) "
                             "feature map: pick a convolutional layer")
        return a

    def _finish(self, cam: torch.Tensor, result: PassResult) -> torch.Tensor:
        return upsample(F.relu(cam) if self.relu else cam, tuple(result.x.shape[-2:]))


class GradCAM(_LayerExplainer):
    """Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391): ReLU(sum_c w_c A_c) with
    w_c the spatial mean of d logit_target / d A_c, bilinearly upsampled (align_corners=False)."""

    name = "gradcam"
    attackable = True

    def maps_from(self, result: PassResult) -> torch.Tensor:
        a, g = self._activations(result), result.layer_grads[self.layer]
        weights = g.mean((2, 3), keepdim=True)
        return self._finish((weights * a).sum(1, keepdim=True), result)


class GradCAMPlusPlus(_LayerExplainer):
    """Grad-CAM++ (Chattopadhyay et al. 2018, https://arxiv.org/abs/1710.11063), closed form for an
    exponential score: alpha = g^2 / (2 g^2 + sum(A) g^3), w_c = sum alpha ReLU(g)."""

    name = "gradcampp"

    def maps_from(self, result: PassResult) -> torch.Tensor:
        a, g = self._activations(result), result.layer_grads[self.layer]
        g2, g3 = g.pow(2), g.pow(3)
        denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        weights = (alpha * F.relu(g)).sum((2, 3), keepdim=True)
        return self._finish((weights * a).sum(1, keepdim=True), result)


class CAM(_LayerExplainer):
    """CAM (Zhou et al. 2016, https://arxiv.org/abs/1512.04150): sum_c W[target, c] A_c for models whose
    ``layer`` feeds global average pooling and one linear ``model.head``. Needs no backward pass."""

    name = "cam"
    attackable = True

    def __init__(self, model: nn.Module, layer: str | None = None, relu: bool = False):
        super().__init__(model, layer, relu)
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear):
            raise ModelError(f"cam needs a model with global average pooling and a linear `head`; "
                             f"{type(model).__name__} has none. Use 'gradcam' instead")
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
