"""Models: xaisec's native architectures, torchvision/timm/user models by name, layer lookup and model surgery.

Every model takes pixels in [0,1]: its first layer is :class:`Normalize` (library models are wrapped in
:class:`Normalized` with their pretrained mean/std). CAM-family explainers find their default layer with
:func:`default_cam_layer` and the class weights with :func:`find_head`.

- :mod:`.native`: ``small_cnn``, ``vgg_small``, ``resnet20``, ``mlp`` (the papers' small models)
- :mod:`.zoo`: ``torchvision:<name>``, ``timm:<name>``, ``module:function``, the papers' short names, weights files
- :mod:`.spec`: :func:`build_model` and :class:`ModelSpec`
- :mod:`.layers`: :func:`get_layer`, :func:`unwrap_model`, :func:`default_cam_layer`, :func:`find_head`
- :mod:`.surgery`: :func:`smooth_activations`, :func:`fold_batchnorm`
- :mod:`.device`: :func:`resolve_device`, :func:`autocast`
"""
from .device import autocast, model_device, resolve_device
from .layers import (Architecture, default_cam_layer, find_head, forward_model, get_layer, inspect_architecture,
                     is_activation, layer_name, tokens_to_grid, unwrap_model)
from .native import (MLP, BasicBlock, ConvNet, MaxPool2d, Normalize, count_parameters, mlp, resnet20, small_cnn,
                     vgg_small)
from .registry import MODELS
from .spec import ModelSpec, build_model, model_spec
from .surgery import SoftplusForReLU, fold_batchnorm, smooth_activations
from .zoo import PAPER_MODELS, Normalized, load_model_weights, model_from_entry_point

__all__ = ["model_device", "model_from_entry_point", "MLP", "MODELS", "PAPER_MODELS", "Architecture", "BasicBlock", "ConvNet", "MaxPool2d", "ModelSpec",
           "Normalize", "Normalized", "SoftplusForReLU", "autocast", "build_model", "count_parameters",
           "default_cam_layer", "find_head", "fold_batchnorm", "forward_model", "get_layer", "inspect_architecture",
           "is_activation", "layer_name", "load_model_weights", "mlp", "model_spec", "resnet20", "resolve_device",
           "small_cnn", "smooth_activations", "tokens_to_grid", "unwrap_model", "vgg_small"]
