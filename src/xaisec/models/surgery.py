"""Model surgery for explanation-aware training: the smooth ReLU surrogate and BatchNorm folding.

Both are context managers that change how the model computes inside the block and restore it on exit, also
after an exception.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import ModelError

def _replace_modules(model: nn.Module, kind: type, make) -> list[tuple[nn.Module, str, nn.Module]]:
    swapped = []
    for parent in model.modules():
        for child_name, child in list(parent.named_children()):
            if type(child) is kind:
                parent._modules[child_name] = make(child)
                swapped.append((parent, child_name, child))
    return swapped


_RELU_FUNCTIONS = {F.relu, torch.relu, torch.Tensor.relu, torch.relu_, torch.Tensor.relu_}
_IN_PLACE_RELU = {torch.relu_, torch.Tensor.relu_}


class SoftplusForReLU(TorchFunctionMode):
    """A torch-function mode that computes every functional ReLU (``F.relu``, ``torch.relu``, ``Tensor.relu`` and
    their in-place forms) as ``softplus(x, beta)``. In-place calls stay in place (callers may ignore the result):
    the softplus of a copy is written back, so autograd never sees its saved input overwritten."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _RELU_FUNCTIONS:
            return func(*args, **kwargs)
        x = args[0]
        inplace = func in _IN_PLACE_RELU or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        if not inplace:
            return F.softplus(x, beta=self.beta)
        return x.copy_(F.softplus(x.clone(), beta=self.beta))


@contextlib.contextmanager
def smooth_activations(model: nn.Module, beta: float = 8.0) -> Iterator[nn.Module]:
    """Inside the block every ReLU of ``model`` computes ``softplus(x, beta)``: ``nn.ReLU`` modules are swapped for
    ``nn.Softplus(beta)`` (visible to hooks, e.g. VisualBackProp's trace), and functional ReLUs called inside a
    ``forward`` (torchvision's ``F.relu(x, inplace=True)`` in DenseNet, ``torch.relu``, ``x.relu_()``) go through
    :class:`SoftplusForReLU` while the model's forward runs (not outside it: an explainer's own ReLU on its map,
    Grad-CAM's, stays a ReLU). Modules and hooks are restored on exit.

    ReLU has zero second derivative, so losses on gradient maps need a smooth surrogate while training
    (Dombrowski et al., "Explanations can be manipulated and geometry is to blame", NeurIPS 2019; Noppel et al.,
    "Disguising Attacks with Explanation-Aware Backdoors", IEEE S&P 2023, use beta=8). Evaluation always uses the
    restored ReLU model. The function mode is a thread-local interception, not a patch of ``torch`` itself, and
    it reaches code that torch.fx cannot trace (data-dependent control flow in DenseNet's layers); it does not
    reach ``F.threshold``/``clamp(min=0)`` written out by hand.
    """
    if beta <= 0:
        raise ModelError(f"softplus beta must be positive, got {beta}")
    swapped = _replace_modules(model, nn.ReLU, lambda _: nn.Softplus(beta=beta))
    modes: list[SoftplusForReLU] = []

    def enter(_module, _inputs):  # only the model's own forward is smoothed: an explainer's ReLU on its map is not
        modes.append(SoftplusForReLU(beta))
        modes[-1].__enter__()

    def leave(_module, _inputs, _output):
        if modes:
            modes.pop().__exit__(None, None, None)

    handles = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave, always_call=True)]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        while modes:
            modes.pop().__exit__(None, None, None)
        for parent, child_name, original in swapped:
            parent._modules[child_name] = original


_TRACED_PAIRS: "weakref.WeakKeyDictionary[nn.Module, list[tuple[str, str]]]" = weakref.WeakKeyDictionary()


def _traced_pairs(model: nn.Module, prefix: str = "") -> list[tuple[str, str]]:
    """``(conv name, bn name)`` where torch.fx shows a Conv2d whose only user is a BatchNorm2d. A module that
    cannot be traced (data-dependent control flow) is searched child by child."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - fx raises many kinds of errors on untraceable code; children are tried
        pairs = []
        for name, child in model.named_children():
            pairs += _traced_pairs(child, f"{prefix}{name}.")
        return pairs
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules.get(node.target)) is not nn.BatchNorm2d or not node.args:
            continue
        src = node.args[0]
        if isinstance(src, torch.fx.Node) and src.op == "call_module" and type(modules.get(src.target)) is nn.Conv2d \
                and len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1:
            pairs.append((prefix + src.target, prefix + node.target))
    return pairs


def _conv_bn_pairs(model: nn.Module) -> Iterator[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """``(conv name, conv, bn)`` for every Conv2d whose output goes only into a BatchNorm2d: consecutive children of
    an ``nn.Sequential``, pairs a module declares in ``conv_bn_pairs`` (as the native ``BasicBlock``), and pairs a
    torch.fx trace of the model finds (torchvision's and timm's blocks; traced once per model)."""
    seen: set[str] = set()
    for prefix, parent in model.named_modules():
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            pairs = zip(names, names[1:])
        else:
            pairs = getattr(parent, "conv_bn_pairs", ())
        for conv_name, bn_name in pairs:
            conv, bn = parent._modules[conv_name], parent._modules[bn_name]
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d:
                name = f"{prefix}.{conv_name}" if prefix else conv_name
                seen.add(name)
                yield name, conv, bn
    if model not in _TRACED_PAIRS:
        _TRACED_PAIRS[model] = _traced_pairs(model)
    modules = dict(model.named_modules())
    for conv_name, bn_name in _TRACED_PAIRS[model]:
        if conv_name not in seen and conv_name in modules and bn_name in modules:
            yield conv_name, modules[conv_name], modules[bn_name]


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
