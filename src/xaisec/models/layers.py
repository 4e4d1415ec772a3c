"""Finding layers in any classifier: names or module objects, through DDP/``torch.compile`` wrappers, and the
layers CAM-family explainers use by default (the input of global pooling, the linear head after it).

The defaults are read from one probe forward pass (batch of one, eval mode, no autograd), so they follow what the
model computes rather than how its modules are named: torchvision, timm and user models alike.
"""
from __future__ import annotations

import difflib
import weakref
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import ModelError

#: torch's activation modules; classes of other libraries (timm's ``GELU``, ``Swish``...) are recognised by name
ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
                    nn.SiLU, nn.Mish, nn.Softplus, nn.Hardswish)
ACTIVATION_NAMES = {"relu", "relu6", "leakyrelu", "prelu", "elu", "celu", "selu", "gelu", "gelutanh", "quickgelu",
                    "silu", "swish", "mish", "softplus", "hardswish", "hardmish", "starrelu", "squaredrelu"}


def is_activation(module: nn.Module) -> bool:
    """Whether ``module`` is an element-wise activation: a torch activation (or subclass), or a parameter-free leaf
    module whose class is named like one (timm's own ``GELU``, ``Swish``, ``HardSwish``...)."""
    if isinstance(module, ACTIVATION_TYPES):
        return True
    name = type(module).__name__.lower().replace("_", "")
    return name in ACTIVATION_NAMES and not any(True for _ in module.children())


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers: the
    modules hooks are registered on, with the names users know."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def forward_model(model: nn.Module) -> nn.Module:
    """The module to call for a hooked forward pass: ``torch.compile`` wrappers are stripped (a compiled graph
    does not run the hooks registered per call), DDP is kept (its forward prepares the gradient reduction)."""
    while isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _candidates(name: str) -> list[str]:
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return [name, f"net.{name}"]  # net.: the library model inside xaisec.models.Normalized


def get_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """The submodule ``layer``: a module object of the model, or its name as in ``named_modules()`` (names with
    DDP/compile prefixes, and a library model's own names inside :class:`~xaisec.models.Normalized`, also work).
    Unknown names raise with suggestions."""
    inner = unwrap_model(model)
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in inner.modules()):
            raise ModelError(f"the layer {type(layer).__name__} given as a module object is not part of the model")
        return layer
    if not isinstance(layer, str):
        raise ModelError(f"a layer is a module name or a module object, got {type(layer).__name__}")
    modules = dict(inner.named_modules())
    for name in _candidates(layer):
        if name in modules:
            return modules[name]
    close = difflib.get_close_matches(layer, list(modules), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    shown = ", ".join(convs[-8:]) or "none"
    raise ModelError(f"the model has no layer {layer!r}.{hint} Its last conv layers are: {shown}")


def layer_name(model: nn.Module, layer: str | nn.Module) -> str:
    """The canonical name (in the unwrapped model) of ``layer``, given as a name or a module object."""
    module = get_layer(model, layer)
    return next(n for n, m in unwrap_model(model).named_modules() if m is module)


@dataclass(frozen=True)
class Architecture:
    """What a probe forward pass found: ``cam_layer`` (the layer whose (B,C,h,w) output feeds global pooling),
    ``head`` (the name of the linear layer applied right after global pooling, None if something else is
    between, e.g. ConvNeXt's LayerNorm) and ``channels`` (C)."""

    cam_layer: str
    head: str | None
    channels: int


_ARCHITECTURES: "weakref.WeakKeyDictionary[nn.Module, Architecture]" = weakref.WeakKeyDictionary()
_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _probe_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """Input shapes to probe with, best first: the data's shape enlarged to at least 64 px (so /32 backbones end
    in a map larger than 1x1, where global pooling can be told from an identity), then the data's own shape (for
    models of a fixed input size)."""
    spec = getattr(model, "xaisec_spec", None)
    if spec is not None and len(spec.input_shape) == 3:
        c, h, w = spec.input_shape
    else:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        c, h, w = (conv.in_channels if conv is not None else 3), 64, 64
    return list(dict.fromkeys([(c, max(h, 64), max(w, 64)), (c, h, w)]))


def _is_global_pool(module: nn.Module, inp, out) -> bool:
    """A parameter-free module mapping (B,C,h,w) with h*w > 1 to (B,C) or (B,C,1,1). Fixed-window pools are left
    out: they are global only by accident of the input size."""
    if not (isinstance(inp, torch.Tensor) and isinstance(out, torch.Tensor) and inp.dim() == 4):
        return False
    if inp.shape[-2] * inp.shape[-1] <= 1 or isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)) or is_activation(module):
        return False
    if any(True for _ in module.parameters()):
        return False
    flat = out.dim() == 2 or (out.dim() == 4 and out.shape[-2:] == (1, 1))
    return flat and out.shape[:2] == inp.shape[:2]


def _probe(model: nn.Module, shapes: list[tuple[int, ...]]) -> tuple[list[tuple[str, nn.Module, object, object]], object]:
    """``(events, logits)``: every submodule call of one forward pass in completion order (name, module, first
    input, output), trying ``shapes`` in turn."""
    from ..train import eval_mode

    param = next(model.parameters(), None)
    dtype, device = (param.dtype, param.device) if param is not None else (torch.float32, torch.device("cpu"))
    error = None
    for shape in shapes:
        events: list[tuple[str, nn.Module, object, object]] = []
        handles = [m.register_forward_hook(lambda mod, i, o, n=n: events.append((n, mod, i[0] if i else None, o)))
                   for n, m in model.named_modules() if n]
        try:
            with torch.no_grad(), eval_mode(model):
                logits = model(torch.rand(1, *shape, dtype=dtype, device=device))
            return events, logits
        except Exception as exc:  # noqa: BLE001 - the probe runs user code; the next shape may fit, else reported
            error = exc
        finally:
            for h in handles:
                h.remove()
    raise ModelError(f"probing {type(model).__name__} with inputs of shape {shapes} to find its CAM layer failed "
                     f"({type(error).__name__}: {error}); give the layer explicitly")


def inspect_architecture(model: nn.Module, input_shape: Sequence[int] | None = None) -> Architecture:
    """Probe ``model`` once (cached per model) for its CAM layer and head; see :class:`Architecture`.

    Global pooling is the last parameter-free module that maps (B,C,h,w) to (B,C) after which no Conv2d runs
    (squeeze-excitation pools run inside the blocks). The CAM layer is the last module to finish whose output *is*
    its input (torchvision's ``layer4``/``features``, timm's ``layer4``/``stages``/``bn2``); when the pooling is
    functional (torchvision's DenseNet) or absent (VGG's 7x7 pooling and MLP head), the last module with a
    (B,C,h,w) output before the first flat one. Token models (3-D outputs after the last conv: ViTs) have none."""
    inner = unwrap_model(model)
    if input_shape is None and inner in _ARCHITECTURES:
        return _ARCHITECTURES[inner]
    if not any(isinstance(m, nn.Conv2d) for m in inner.modules()):
        raise ModelError(f"{type(inner).__name__} has no Conv2d layer, so CAM-style explainers do not apply; "
                         "use a gradient explainer such as 'simplegrad' or 'ig'")
    events, logits = _probe(inner, [tuple(input_shape)] if input_shape is not None else _probe_shapes(inner))
    last_conv = max((i for i, e in enumerate(events) if isinstance(e[1], nn.Conv2d)), default=-1)
    pools = [i for i, (_, m, inp, out) in enumerate(events) if i > last_conv and _is_global_pool(m, inp, out)]
    pool = pools[0] if pools else None
    feature = events[pool][2] if pool is not None else None
    end = pool if pool is not None else next(
        (i for i, e in enumerate(events) if isinstance(e[3], torch.Tensor) and e[3].dim() == 2), len(events))
    same = [i for i in range(end) if feature is not None and events[i][3] is feature]
    same = [i for i in same if not isinstance(events[i][1], nn.Identity)] or same
    tokens = any(isinstance(e[3], torch.Tensor) and e[3].dim() == 3 for e in events[last_conv + 1:])
    maps = [] if tokens else [i for i in range(end) if isinstance(events[i][3], torch.Tensor)
                              and events[i][3].dim() == 4 and "pool" not in type(events[i][1]).__name__.lower()]
    if not (same or maps):
        norms = [n for n, _ in inner.named_modules() if n.endswith("norm1")]
        hint = f" (e.g. layer={norms[-1]!r}, reshape_transform='tokens')" if norms else ""
        raise ModelError(f"{type(inner).__name__} has no layer with a (B,C,h,w) feature map: CAM-style explainers "
                         f"need a convolutional layer, or for a token model a layer and reshape_transform{hint}; "
                         "gradient explainers ('simplegrad', 'ig') need no layer")
    cam = events[(same or maps)[-1]]
    features = cam[3]
    pooled = features.mean((2, 3))
    head = None
    for i in range(end, len(events)):
        name, module, inp, out = events[i]
        if isinstance(module, nn.Linear) and module.in_features == features.shape[1]:
            fed_pooled = isinstance(inp, torch.Tensor) and inp.numel() == pooled.numel() and \
                torch.allclose(inp.reshape(pooled.shape), pooled, rtol=1e-4, atol=1e-5)
            gives_logits = isinstance(out, torch.Tensor) and out.shape == logits.shape and torch.allclose(out, logits)
            head = name if fed_pooled and gives_logits else None
            break
    arch = Architecture(cam[0], head, int(features.shape[1]))
    _ARCHITECTURES[inner] = arch
    return arch


def default_cam_layer(model: nn.Module, input_shape: Sequence[int] | None = None) -> str:
    """The layer CAM methods use by default: ``model.cam_layer`` (xaisec's native models), else the input of
    global pooling found by :func:`inspect_architecture`."""
    name = getattr(unwrap_model(model), "cam_layer", None)
    if isinstance(name, str):
        return name
    return inspect_architecture(model, input_shape).cam_layer


def find_head(model: nn.Module, input_shape: Sequence[int] | None = None) -> nn.Linear | None:
    """The linear layer right after global pooling (CAM's class weights): ``model.head`` when it is a linear
    layer, else the one :func:`inspect_architecture` finds; None when the model has none."""
    inner = unwrap_model(model)
    head = getattr(inner, "head", None)
    if isinstance(head, nn.Linear):
        return head
    name = inspect_architecture(model, input_shape).head
    return inner.get_submodule(name) if name else None


def tokens_to_grid(tokens: torch.Tensor, prefix_tokens: int | None = None) -> torch.Tensor:
    """Token features ``(B,N,C)`` of a vision transformer as a feature map ``(B,C,h,w)``: the first
    ``prefix_tokens`` (class/register tokens; default: whatever is left over above the largest square) are dropped
    and the rest laid on an h x w = sqrt(N') grid. Feature maps pass unchanged."""
    if tokens.dim() == 4:
        return tokens
    if tokens.dim() != 3:
        raise ModelError(f"token features must be (B,N,C), got shape {tuple(tokens.shape)}")
    n = tokens.shape[1]
    if prefix_tokens is None:
        prefix_tokens = n - int(n**0.5) ** 2
    side = int(round((n - prefix_tokens) ** 0.5))
    if side * side != n - prefix_tokens:
        raise ModelError(f"{n} tokens minus {prefix_tokens} prefix tokens do not form a square grid; give prefix_tokens")
    grid = tokens[:, prefix_tokens:]
    return grid.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
