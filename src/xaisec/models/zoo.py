"""Models from torchvision, timm and user code, made into xaisec classifiers.

A spec names the model: ``torchvision:resnet50``, ``timm:convnext_atto``, ``mypkg.nets:build`` (a function in an
importable module; the current working directory is importable, as with ``python -m``), or one of the papers'
short names registered here (``vgg19``, ``resnet18``, ``resnet50``, ``densenet121``, ``densenet169``,
``efficientnet_b0``: torchvision's ImageNet architectures; ResNet-20 is the native ``resnet20``).

Library models are built for the data: ``num_classes`` outputs and ``in_channels`` input channels (torchvision's
first conv is replaced when the data is not RGB, timm gets ``in_chans``). Their pretrained input normalisation (the
weights' ``mean``/``std``, from torchvision's weights metadata or timm's ``pretrained_cfg``; no download) becomes the
first layer (:class:`Normalized`), so they take pixels in [0,1] like every xaisec model. Weights come only from a
local file (:func:`load_model_weights`).
"""
from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ModelError
from .native import Normalize, _stats
from .registry import LIBRARY_PREFIXES, MODELS

#: the papers' ImageNet-scale architectures (Fang & Choromanska; Latka et al.; Zhang et al.'s ADV2) by short name
PAPER_MODELS = {name: f"torchvision:{name}" for name in
                ("vgg19", "resnet18", "resnet50", "densenet121", "densenet169", "efficientnet_b0")}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Normalized(nn.Module):
    """``net(normalize(x))``: a library model that takes pixels in [0,1]. Layer names are ``net.<name>``
    (:func:`xaisec.models.get_layer` also accepts the library's own ``<name>``)."""

    def __init__(self, normalize: Normalize, net: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def _closest(name: str, known: Sequence[str], what: str) -> ModelError:
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    hint = f" Closest names: {', '.join(close)}." if close else ""
    return ModelError(f"unknown {what} model {name!r}.{hint}")


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def first_conv_name(net: nn.Module) -> str | None:
    """Name of the first ``nn.Conv2d`` in module order (the stem of torchvision and timm CNNs and ViTs)."""
    return next((n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)


def last_linear_name(net: nn.Module) -> str | None:
    """Name of the last ``nn.Linear`` in module order (the classifier of torchvision and timm models)."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _set_in_channels(net: nn.Module, in_channels: int) -> None:
    """Replace the first conv by a freshly initialised one taking ``in_channels`` channels (same geometry)."""
    name = first_conv_name(net)
    if name is None:
        raise ModelError(f"{type(net).__name__} has no Conv2d to adapt to {in_channels} input channels")
    old = net.get_submodule(name)
    if old.in_channels == in_channels:
        return
    if old.groups != 1:
        raise ModelError(f"the first conv {name!r} of {type(net).__name__} is grouped; cannot adapt it to {in_channels} channels")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    bias=old.bias is not None, padding_mode=old.padding_mode)
    _set_module(net, name, new)


def _torchvision_stats(name: str) -> tuple[Sequence[float], Sequence[float]]:
    from torchvision.models import get_model_weights

    try:
        transforms = get_model_weights(name).DEFAULT.transforms()
        return tuple(transforms.mean), tuple(transforms.std)
    except (ValueError, AttributeError, TypeError):  # models without published weights
        return IMAGENET_MEAN, IMAGENET_STD


def torchvision_model(name: str, in_channels: int, num_classes: int, image_size: tuple[int, int] | None = None,
                      **options) -> tuple[nn.Module, tuple, tuple]:
    """``(net, mean, std)``: torchvision's ``name`` with ``num_classes`` outputs, randomly initialised."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise _closest(name, known, "torchvision classification")
    try:
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    except TypeError as exc:
        raise ModelError(f"torchvision:{name} does not take options {sorted(options)}: {exc}") from exc
    _set_in_channels(net, in_channels)
    return (net, *_torchvision_stats(name))


def timm_model(name: str, in_channels: int, num_classes: int, image_size: tuple[int, int] | None = None,
               **options) -> tuple[nn.Module, tuple, tuple]:
    """``(net, mean, std)``: timm's ``name`` with ``num_classes`` outputs and ``in_chans=in_channels``, randomly
    initialised; mean/std from its ``pretrained_cfg``. Models of a fixed input size (ViTs) get
    ``img_size=image_size`` unless ``img_size`` is given."""
    import timm

    if not timm.is_model(name):
        raise _closest(name, timm.list_models(), "timm")
    cfg = timm.models.get_pretrained_cfg(name)
    if image_size is not None and "img_size" not in options and cfg is not None and cfg.fixed_input_size:
        options["img_size"] = tuple(image_size)
    try:
        net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options)
    except TypeError as exc:
        raise ModelError(f"timm:{name} does not take options {sorted(options)}: {exc}") from exc
    cfg = getattr(net, "pretrained_cfg", None) or {}
    return net, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def import_user_function(spec: str) -> Callable:
    """The function ``f`` of ``module.path:f``, importing the module as ``python -m`` would: the current
    working directory first on the import path (for the duration of the import only)."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ModelError(f"model spec {spec!r} must look like 'module.path:function', 'torchvision:<name>' or 'timm:<name>'")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any error raised by the user's module is reported with the spec that imported it
        raise ModelError(f"model spec {spec!r}: could not import module {module_name!r} (searched the current "
                         f"directory {cwd} and the installed packages): {type(exc).__name__}: {exc}") from exc
    finally:
        if added:
            sys.path.remove(cwd)
    fn = getattr(module, attr, None)
    if not callable(fn):
        functions = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(attr, functions, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ModelError(f"model spec {spec!r}: module {module_name!r} has no function {attr!r}.{hint}")
    return fn


def user_model(spec: str, in_channels: int, num_classes: int, **options) -> nn.Module:
    """Call the user's function; ``num_classes`` and ``in_channels`` are passed when its signature takes them."""
    fn = import_user_function(spec)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if takes_all or key in params:
            options.setdefault(key, value)
    net = fn(**options)
    if not isinstance(net, nn.Module):
        raise ModelError(f"model spec {spec!r} returned {type(net).__name__}, not a torch.nn.Module; the function "
                         "must build and return the classifier")
    return net


def model_from_entry_point(spec: str, what: str = "model") -> nn.Module:
    """Call the user's entry point ``module:function`` without arguments (``xaisec audit --model``) and return the
    ``nn.Module`` it builds; the module is imported as ``python -m`` would (current directory first). This runs the
    module's code: only name modules you trust."""
    fn = import_user_function(spec)
    net = fn()
    if not isinstance(net, nn.Module):
        raise ModelError(f"{what} entry point {spec!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def build_from_spec(spec: str, in_channels: int = 3, num_classes: int = 10, mean=None, std=None,
                    image_size: tuple[int, int] | None = None, **options) -> nn.Module:
    """A classifier for pixels in [0,1] from ``torchvision:<name>``, ``timm:<name>`` or ``module:function``.

    ``mean``/``std`` override the pretrained normalisation; a user function's model is wrapped in
    :class:`Normalized` only when they are given (it may normalise itself)."""
    prefix, _, name = spec.partition(":")
    if prefix in LIBRARY_PREFIXES:
        make = torchvision_model if prefix == "torchvision" else timm_model
        net, default_mean, default_std = make(name, in_channels, num_classes, image_size, **options)
    else:
        net = user_model(spec, in_channels, num_classes, **options)
        if mean is None and std is None:
            return net
        default_mean, default_std = (0.0,) * in_channels, (1.0,) * in_channels
    if len(default_mean) != in_channels:  # RGB statistics for grey or multispectral data: their average per channel
        default_mean, default_std = [sum(default_mean) / len(default_mean)], [sum(default_std) / len(default_std)]
    mean = _stats(default_mean if mean is None else mean, in_channels, 0.0)
    std = _stats(default_std if std is None else std, in_channels, 1.0)
    return Normalized(Normalize(mean, std), net)


def spec_factory(spec: str) -> Callable[..., nn.Module]:
    """A factory ``(in_channels, num_classes, **options)`` for a prefixed spec, checked now: an unknown library
    name lists the closest names, a user function must import."""
    prefix, _, name = spec.partition(":")
    if prefix == "torchvision":
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            raise _closest(name, known, "torchvision classification")
    elif prefix == "timm":
        import timm

        if not timm.is_model(name):
            raise _closest(name, timm.list_models(), "timm")
    else:
        import_user_function(spec)
    return functools.partial(build_from_spec, spec)


for _short, _spec in PAPER_MODELS.items():
    MODELS.register(_short)(functools.partial(build_from_spec, _spec))


def _adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Pretrained first-conv filters ``(O,C',k,k)`` for ``in_channels`` inputs: summed over C' for one channel,
    otherwise C' cycled and rescaled by C'/in_channels, so a grey or multispectral image gives activations of the
    pretrained scale."""
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    reps = -(-in_channels // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def fit_pretrained_state(net: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (a library checkpoint for ``net``'s architecture) fitted to ``net``: a classifier head of another
    size is left out (``net`` keeps its fresh head) and the first conv's filters are adapted to ``net``'s input
    channels. Every other key must match exactly (checked when loading)."""
    expected = net.state_dict()
    state = dict(state)
    head = last_linear_name(net)
    for key in (f"{head}.weight", f"{head}.bias") if head else ():
        if key in state and key in expected and state[key].shape != expected[key].shape:
            state[key] = expected[key]
    stem = first_conv_name(net)
    key = f"{stem}.weight"
    if stem and key in state and key in expected and state[key].shape != expected[key].shape \
            and state[key].shape[0] == expected[key].shape[0] and state[key].shape[2:] == expected[key].shape[2:]:
        state[key] = _adapt_first_conv(state[key], expected[key].shape[1]).to(expected[key].dtype)
    return state


def load_model_weights(model: nn.Module, path: str | Path, *, allow_pickle: bool = False,
                       finetune: bool = False) -> nn.Module:
    """Load a weights file into ``model``: an xaisec file (safetensors of the whole model) or a library checkpoint
    of the wrapped network (torchvision/timm ``.pth``, read by ``torch.load(weights_only=True)`` with
    ``allow_pickle``). ``finetune``: the weights were trained on another task, keep all but the classifier head and
    adapt the first conv to the data's channels. A mismatch raises :class:`ModelError` naming the first keys."""
    from ..io import check_state, check_weight_values, read_weights

    state = read_weights(path, allow_pickle=allow_pickle)
    target = model
    if isinstance(model, Normalized) and not any(k.startswith("net.") for k in state):
        target = model.net  # a library checkpoint: keys of the wrapped network, normalisation kept as built
    if finetune:
        state = fit_pretrained_state(target, state)
    check_state(target, state, path)
    check_weight_values(state, target.state_dict(), path)
    target.load_state_dict(state)
    return model
