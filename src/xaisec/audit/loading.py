"""What ``xaisec audit`` loads: the model under audit (safetensors + architecture, or a Python entry point) and
optional suspect inputs; the clean data is named as everywhere (:func:`xaisec.data.load_data`). Every mismatch ends
in a :class:`~xaisec.errors.XaisecError` naming the fix.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data import ImageDataset
from ..data.files import read_npz
from ..data.npz import images_from_array
from ..errors import DataError, ModelError, XaisecError
from ..io import load_weights
from ..models import MODELS, build_model, model_from_entry_point
from ..train import eval_mode


def model_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The ``(C,H,W)`` input shape a model declares, if it does: an ``input_shape`` attribute, or timm's
    ``pretrained_cfg["input_size"]``; None when it does not tell."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        shape = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    return tuple(int(s) for s in shape) if shape is not None and len(shape) == 3 else None


def is_entry_point(model_spec: str) -> bool:
    """``module:function`` (and not an existing file or a ``.safetensors`` path)."""
    path = Path(model_spec)
    return ":" in model_spec and not path.exists() and path.suffix != ".safetensors"


def load_audit_model(model_spec: str, arch: str | None, data: ImageDataset, reference: bool = False, *,
                     allow_pickle: bool = False, built: nn.Module | None = None) -> nn.Module:
    """Build the model: ``module:function`` (called with no arguments, must return an ``nn.Module``) or a
    safetensors file loaded into ``build_model(arch, data.input_shape, data.num_classes)``, or take the ``built``
    one; then check that it takes the data's input size and returns one logit per class. Returned in eval mode."""
    what = "reference model" if reference else "model"
    path = Path(model_spec)
    if built is not None:
        model = built
    elif is_entry_point(model_spec):
        model = model_from_entry_point(model_spec, what)
    else:
        if not path.is_file():
            raise ModelError(f"{what} weights file {path} does not exist")
        if not arch:
            raise ModelError(f"--arch is needed to load {path} (one of: {', '.join(MODELS.names())})")
        try:
            model = build_model(arch, data.input_shape, data.num_classes)
        except XaisecError as exc:
            raise ModelError(f"architecture {arch!r} does not fit the data {data.summary()}: {exc}") from exc
        try:
            load_weights(model, path, allow_pickle=allow_pickle)
        except ModelError as exc:  # the architecture was built for the data's shape: the data may be what is off
            raise ModelError(f"{exc} The {what} was built for the data's input shape {data.input_shape} and "
                             f"{data.num_classes} classes: if the weights were trained on another number of "
                             "channels or classes, give matching data (for an image folder: imagefolder:root=DIR,"
                             "channels=1 or 3)") from exc
    check_model_fits(model, data, what)
    return model.eval()


def check_model_fits(model: nn.Module, data: ImageDataset, what: str = "model") -> None:
    """One forward pass on two data samples: the input size is accepted and the output is (B, num_classes)."""
    x = data.x_test[:2]
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x)
    except RuntimeError as exc:
        raise DataError(f"the {what} does not accept inputs of shape {tuple(x.shape[1:])} from {data.name} "
                        f"({str(exc).splitlines()[0]}); give data of the size it was trained on: for an image folder "
                        "or a dataset that resizes, set it in the data options, e.g. imagefolder:root=DIR,size=28,"
                        "channels=1 (size = height = width, or size=[H,W]; channels 1 or 3)") from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != data.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"the {what} returns {shape} for 2 inputs, but {data.name} has {data.num_classes} classes: "
                         "it must return logits of shape (B, classes)")


def load_suspects(path: str, like: ImageDataset) -> torch.Tensor:
    """Inputs to screen (e.g. a batch the user is about to trust): an ``.npz`` file with an array ``x``
    (labels ignored) of the clean data's input shape."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"suspect inputs file {p} does not exist")
    if p.suffix != ".npz":
        raise DataError(f"suspect inputs must be an .npz file with an array 'x', got {p.name}")
    arrays = read_npz(p, "suspect inputs file")
    if "x" not in arrays:
        raise DataError(f"{p} must hold an array 'x' of images; it has {sorted(arrays)}")
    x = images_from_array(arrays["x"], f"suspect inputs in {p.name}")
    if tuple(x.shape[1:]) != like.input_shape:
        raise DataError(f"suspect inputs have shape {tuple(x.shape[1:])}, the clean data {like.input_shape}")
    return x
