"""Explainer interface and the shared forward/backward pass.

An explainer maps a batch ``x`` (B,C,H,W) in [0,1] to ``Explanation(logits (B,K), maps (B,1,H,W))``:
raw (unnormalised) maps at input resolution. Single-pass explainers (Grad-CAM, SimpleGrad, VBP, ...)
only *describe* what they need from one forward and one backward pass (:class:`PassRequest`) and
compute their map from the shared :class:`PassResult`, so several of them on one batch cost one
forward and at most one backward (see :func:`xaisec.explainers.explain_all`).

Gradients are taken with ``torch.autograd.grad`` only (``.grad`` of parameters is never touched);
hooks live only inside :func:`recording`; the model's train/eval mode is left as found.
"""
from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError, ModelError
from ..registry import Registry
from ..models import forward_model, get_layer, is_activation
from ..train import batchnorm_stats_kept
from ..validation import check_images, match_model_dtype, model_logits

#: kept for callers that test ``isinstance``; the explainers use :func:`xaisec.models.is_activation`
ACTIVATIONS = (nn.ReLU, nn.Softplus, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.ReLU6)
SPATIAL_OPS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


@dataclass
class Explanation:
    """``logits`` (B,K) of the explained forward pass and ``maps`` (B,1,H,W) (or (B,F) for flat inputs)."""

    logits: torch.Tensor
    maps: torch.Tensor


@dataclass
class PassRequest:
    """What an explainer needs from the shared pass: layer outputs (with their gradients), the input gradient,
    and/or the ordered trace of activations and spatial ops (VisualBackProp)."""

    layers: set[str] = field(default_factory=set)
    layer_grads: bool = False
    input_grad: bool = False
    trace: bool = False

    def merge(self, other: "PassRequest") -> "PassRequest":
        return PassRequest(self.layers | other.layers, self.layer_grads or other.layer_grads,
                           self.input_grad or other.input_grad, self.trace or other.trace)


@dataclass
class TraceEvent:
    """One call of an activation or spatial op during the forward pass, in execution order."""

    module: nn.Module
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    output: torch.Tensor | None  # kept for activations only


@dataclass
class PassResult:
    """Everything recorded during one forward (+ optional backward) pass."""

    x: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor
    layer_outputs: dict[str, torch.Tensor]
    layer_grads: dict[str, torch.Tensor]
    input_grad: torch.Tensor | None
    trace: list[TraceEvent]


def resolve_target(target, logits: torch.Tensor) -> torch.Tensor:
    """Target classes ``(B,)``: ``None`` -> predicted class; an int -> that class for every sample."""
    batch, classes = logits.shape
    if target is None:
        return logits.detach().argmax(1)
    if isinstance(target, (str, bytes, bool)):
        raise DataError(f"target must be None, an int class index or a (B,) tensor of class indices, got {target!r}")
    try:
        t = torch.as_tensor(target, device=logits.device)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(f"target must be None, an int class index or a (B,) tensor of class indices, "
                        f"got {target!r} ({type(target).__name__})") from None
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise DataError(f"target must hold integer class indices, got dtype {t.dtype} ({target!r:.60})")
    t = t.long().expand(batch) if t.dim() == 0 else t.long()
    if t.shape != (batch,):
        raise DataError(f"target has shape {tuple(t.shape)}; expected an int or a tensor of shape ({batch},)")
    if (t < 0).any() or (t >= classes).any():
        raise DataError(f"target classes must be in [0, {classes - 1}], got values in [{t.min().item()}, {t.max().item()}]")
    return t


def reduce_channels(t: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce ``(B,C,H,W)`` over channels to ``(B,1,H,W)`` by ``max``/``sum``/``mean``; flat ``(B,F)`` stays."""
    if t.dim() != 4:
        return t
    if how == "max":
        return t.amax(1, keepdim=True)
    if how == "sum":
        return t.sum(1, keepdim=True)
    if how == "mean":
        return t.mean(1, keepdim=True)
    raise DataError(f"unknown channel reduction {how!r}; use 'max', 'sum' or 'mean'")


def _hw(t) -> tuple[int, int]:
    return (int(t.shape[-2]), int(t.shape[-1])) if isinstance(t, torch.Tensor) and t.dim() == 4 else (0, 0)


@contextlib.contextmanager
def recording(model: nn.Module, layers: Sequence[str] = (), trace: bool = False,
              grad_from_layers: bool = False) -> Iterator[tuple[dict, list]]:
    """Record outputs of the named layers (and, with ``trace``, every activation/spatial op in order).

    In-place activation modules are switched off inside the block, and a recorded layer hands a copy of its output
    on, so in-place functional ops after it (torchvision's ``F.relu(x, inplace=True)``) cannot overwrite what was
    recorded. ``layers`` are names or module objects of ``model`` (see :func:`xaisec.models.get_layer`; outputs are
    keyed as given). Every hook is removed on exit, also when the forward pass raises. With ``grad_from_layers`` the forward
    is meant to start without autograd: the first recorded layer hands on a leaf copy of its output that requires
    grad and switches autograd on, so only the graph from the layers to the logits is recorded.
    """
    outputs: dict[str, torch.Tensor] = {}
    events: list[TraceEvent] = []
    handles = []
    inplace = [m for m in model.modules() if getattr(m, "inplace", False) and is_activation(m)]
    try:
        for m in inplace:
            m.inplace = False
        for name in layers:
            def keep(module, inputs, output, name=name):
                if not isinstance(output, torch.Tensor):
                    raise ModelError(f"layer {name!r} returns {type(output).__name__}, not a tensor; pick another layer")
                if grad_from_layers and not output.requires_grad:
                    output = output.detach().requires_grad_(True)
                    torch.set_grad_enabled(True)  # the caller's no_grad block restores the mode on exit
                outputs[name] = output
                return output.clone()  # downstream in-place ops change the copy, not the recorded tensor
            handles.append(get_layer(model, name).register_forward_hook(keep))
        if trace:
            for m in model.modules():
                if is_activation(m) or isinstance(m, SPATIAL_OPS):
                    def log(module, inputs, output):
                        is_act = is_activation(module)
                        events.append(TraceEvent(module, _hw(inputs[0]), _hw(output), output if is_act else None))
                    handles.append(m.register_forward_hook(log))
        yield outputs, events
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True


def run_pass(model: nn.Module, x: torch.Tensor, target, request: PassRequest, create_graph: bool) -> PassResult:
    """One forward pass recording what ``request`` asks for, then one ``autograd.grad`` of the summed
    target logits w.r.t. the input and/or the recorded layers (samples are independent in eval mode).

    When only layer gradients are needed and no graph is kept (Grad-CAM maps for evaluation), the layers before
    the first recorded one run without autograd: same maps, about a third less time for the forward pass."""
    names = sorted(request.layers)
    from_layers = bool(names) and request.layer_grads and not request.input_grad and not create_graph
    if not from_layers:
        x = x if x.requires_grad else x.detach().requires_grad_(True)
    grad_mode = torch.no_grad() if from_layers else torch.enable_grad()
    with grad_mode, recording(model, names, request.trace, from_layers) as (outputs, events):
        logits = model_logits(forward_model(model), x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ModelError(f"the model must return logits of shape (B, classes), got {getattr(logits, 'shape', type(logits))}")
    target_t = resolve_target(target, logits)
    missing = [n for n in names if n not in outputs]
    if missing:
        raise ModelError(f"layer(s) {missing} were not called during the forward pass; pick a layer the model uses")
    wrt = ([x] if request.input_grad else []) + ([outputs[n] for n in names] if request.layer_grads else [])
    grads: list[torch.Tensor] = []
    if wrt:
        with torch.enable_grad():  # also when called under torch.no_grad(), as Captum does
            score = logits.gather(1, target_t[:, None]).sum()
            grads = list(torch.autograd.grad(score, wrt, create_graph=create_graph))
    input_grad = grads.pop(0) if request.input_grad else None
    layer_grads = dict(zip(names, grads)) if request.layer_grads else {}
    return PassResult(x, logits, target_t, outputs, layer_grads, input_grad, events)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize ``(B,1,h,w) -> (B,1,H,W)`` with ``align_corners=False`` (Grad-CAM convention)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


#: every explainer, registered with ``@EXPLAINERS.register()`` in the file that defines it (its ``name`` attribute)
EXPLAINERS = Registry("explainer")


class Explainer(abc.ABC):
    """Base class: ``explainer(x, target=None, *, create_graph=False) -> Explanation``.

    Subclasses implement :meth:`_explain` on a validated batch. With ``create_graph=True`` the maps stay in
    the autograd graph (differentiable w.r.t. parameters and input); otherwise they come back detached.
    """

    name = "explainer"
    #: whether maps are differentiable w.r.t. parameters (checked against finite differences in the tests)
    differentiable = True
    #: whether the method needs spatial (B,C,H,W) inputs and conv layers
    needs_images = False
    #: whether ADV2 (Zhang et al., "Interpretable Deep Learning under Fire", USENIX Security 2020) can attack the
    #: method: its maps are differentiable w.r.t. the input with ``create_graph=True`` (see :mod:`xaisec.evasion`)
    attackable: ClassVar[bool] = False
    #: how ADV2 attacks it unless the config says otherwise (keys of the adv2 ``interpreter_settings``):
    #: ``smooth_beta`` (Softplus surrogate of ReLU), ``norm`` (map normalisation), ``c`` (interpreter term weight)
    attack_defaults: ClassVar[Mapping[str, Any]] = {}
    #: what the method needs besides the model, handed to its constructor by experiments (``"saver"``: a trained
    #: RTS saver, see :mod:`xaisec.explainers.rts_train`)
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise ModelError(f"an explainer needs a torch.nn.Module, got {type(model).__name__}")
        self.model = model

    @classmethod
    def options_from_data(cls, x_train: torch.Tensor, seed: int = 0) -> dict[str, Any]:
        """Options this method takes from the training data when a command builds it for a dataset (default: none;
        GradientSHAP draws its background set)."""
        return {}

    @classmethod
    def attack_term_type(cls) -> type:
        """The ADV2 loss term that attacks this method's maps: :class:`~xaisec.evasion.objective.InterpreterTerm`
        (methods with state across attack steps, such as MASK, return their own subclass)."""
        from ..evasion.objective import InterpreterTerm

        return InterpreterTerm

    def __call__(self, x: torch.Tensor, target=None, *, create_graph: bool = False) -> Explanation:
        """Explain ``x``; images of another float dtype than the model's are cast to it (with a warning), and
        train-mode BatchNorm layers keep their running statistics (see :func:`~xaisec.train.batchnorm_stats_kept`)."""
        check_images(x, allow_flat=not self.needs_images)
        x = match_model_dtype(x, self.model)
        with torch.enable_grad(), batchnorm_stats_kept(self.model):  # also under torch.no_grad(): explainers differentiate
            out = self._explain(x, target, create_graph)
        if not create_graph:
            out = Explanation(out.logits.detach(), out.maps.detach())
        return out

    @abc.abstractmethod
    def _explain(self, x: torch.Tensor, target, create_graph: bool) -> Explanation:
        """Explain a validated batch."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class SinglePassExplainer(Explainer):
    """An explainer computed from one shared forward/backward pass: declare :meth:`request`, implement :meth:`maps_from`."""

    @abc.abstractmethod
    def request(self) -> PassRequest:
        """What this method needs from the shared pass."""

    @abc.abstractmethod
    def maps_from(self, result: PassResult) -> torch.Tensor:
        """Maps (B,1,H,W) from the shared pass."""

    def _explain(self, x: torch.Tensor, target, create_graph: bool) -> Explanation:
        result = run_pass(self.model, x, target, self.request(), create_graph)
        return Explanation(result.logits, self.maps_from(result))
