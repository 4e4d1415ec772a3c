"""What ``xaisec audit`` loads: the model under audit (safetensors + architecture, or a Python entry point),
the user's clean data (a registered dataset, ``NAME:key=value,...``, an ``.npz`` file or an image folder)
and optional suspect inputs. Every mismatch ends in a :class:`~xaisec.errors.XaisecError` naming the fix.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from ..data import DATASETS, ImageDataset, load_dataset, stratified_split
from ..data.files import labels_from_array, read_npz
from ..errors import DataError, ModelError, XaisecError
from ..io import load_weights
from ..models import MODELS, build_model, model_from_entry_point
from ..train import eval_mode
from ..validation import check_images


def parse_data_spec(spec: str) -> tuple[str, dict]:
    """``"cifar10:root=/data/cifar,max_samples=500"`` -> ``("cifar10", {"root": "/data/cifar", "max_samples": 500})``."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise DataError(f"cannot read data option {item!r} in {spec!r}; write NAME:key=value,key=value")
        options[key.strip()] = yaml.safe_load(value)
    return name.strip(), options


def images_from_array(a: np.ndarray, where: str) -> torch.Tensor:
    """(N,C,H,W) float images in [0,1] from an (N,H,W), (N,C,H,W) or (N,H,W,C) array, uint8 or float."""
    if a.dtype.kind not in "uif":
        raise DataError(f"{where} has dtype {a.dtype}; images must be uint8 (0-255) or floats in [0,1]")
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise DataError(f"{where} has shape {a.shape}; expected (N,C,H,W) or (N,H,W,C) images")
    if a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)  # channels-last -> channels-first
    t = torch.from_numpy(np.ascontiguousarray(a))
    t = t.float() / 255 if a.dtype == np.uint8 else t.float()
    return check_images(t, where)


def load_npz(path: Path) -> ImageDataset:
    """``x`` (N,C,H,W) or (N,H,W,C), uint8 0-255 or float in [0,1], and integer ``y``; optional ``x_test``/``y_test``
    (otherwise 30% of the samples are held out, stratified)."""
    arrays = read_npz(path)
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path} must hold arrays 'x' (images) and 'y' (labels); it has {sorted(arrays)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        have, lack = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise DataError(f"{path} has {have} but no {lack}; give both test arrays or neither (then 30% of x is held out)")
    x = images_from_array(arrays["x"], f"{path}: x")
    y = labels_from_array(arrays["y"], f"{path}: y", count=len(x))
    if "x_test" in arrays:
        x_test = images_from_array(arrays["x_test"], f"{path}: x_test")
        y_test = labels_from_array(arrays["y_test"], f"{path}: y_test", count=len(x_test))
    else:
        train, test = stratified_split(y.numpy(), 0.3, seed=0)
        x, y, x_test, y_test = x[train], y[train], x[test], y[test]
    classes = int(max(y.max(), y_test.max())) + 1
    return ImageDataset(path.stem, x, y, x_test, y_test, num_classes=classes)


def load_audit_data(spec: str, input_size: tuple[int, ...] | None = None) -> ImageDataset:
    """The clean data for the audit from a registered name (with options), an ``.npz`` file or an image folder."""
    path = Path(spec)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DataError(f"data file {path} does not exist")
        return load_npz(path)
    if path.is_dir():
        if "imagefolder" not in DATASETS:
            raise DataError(f"{path} is a folder, but this xaisec has no 'imagefolder' loader; save the data as an .npz "
                            "file with arrays x and y instead")
        options = {"root": str(path)}
        if input_size is not None:
            options.update(channels=input_size[0], size=tuple(input_size[1:]))
        return load_dataset("imagefolder", **options)
    name, options = parse_data_spec(spec)
    if name not in DATASETS:
        looks_like_path = any(c in spec for c in "/\\.") and ":" not in spec
        if looks_like_path:
            raise DataError(f"data path {spec} does not exist (give an existing .npz file or image folder, or a "
                            f"dataset name: {', '.join(DATASETS.names())})")
    try:
        return load_dataset(name, **options)
    except TypeError as exc:
        raise DataError(f"dataset {name!r} does not take the options {sorted(options)}: {exc}") from exc


def load_audit_model(model_spec: str, arch: str | None, data: ImageDataset, reference: bool = False, *,
                     allow_pickle: bool = False) -> nn.Module:
    """Build the model: ``module:function`` (called with no arguments, must return an ``nn.Module``) or a
    safetensors file loaded into ``build_model(arch, data.input_shape, data.num_classes)``; then check that it
    takes the data's input size and returns one logit per class. Returned in eval mode."""
    what = "reference model" if reference else "model"
    path = Path(model_spec)
    if ":" in model_spec and not path.exists() and path.suffix != ".safetensors":
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
        load_weights(model, path, allow_pickle=allow_pickle)
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
                        f"({str(exc).splitlines()[0]}); give data of the size it was trained on") from exc
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
