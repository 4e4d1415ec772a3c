"""``build_model``: any model by name, and :class:`ModelSpec`, the record that rebuilds it (saved in run folders)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..errors import ModelError
from .native import Normalize, mlp
from .registry import MODELS
from .zoo import build_from_spec

#: options of :func:`build_model` that say where weights come from; they are not part of the architecture
WEIGHT_OPTIONS = ("weights", "allow_pickle", "finetune")


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model's architecture: its ``name`` (a registered name, ``torchvision:<name>``,
    ``timm:<name>`` or ``module:function``), the data's ``input_shape`` and ``num_classes``, the architecture
    ``options`` and the input normalisation ``mean``/``std`` of its first layer (None: the model has none).
    Weights are stored next to it, not in it."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    options: dict[str, Any] = field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        unknown = set(d) - {"name", "input_shape", "num_classes", "options", "mean", "std"}
        if unknown or "name" not in d:
            raise ModelError(f"a model spec has keys name, input_shape, num_classes, options, mean, std; got {sorted(d)}")
        return cls(d["name"], tuple(d["input_shape"]), int(d["num_classes"]), dict(d.get("options") or {}),
                   d.get("mean"), d.get("std"))

    def save(self, path: str | Path) -> Path:
        from ..io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the model spec {path}: {exc}") from exc

    def build(self, weights: str | Path | None = None, **weight_options) -> nn.Module:
        """The architecture again (same normalisation), with ``weights`` loaded when given."""
        norm = {} if self.mean is None else {"mean": self.mean, "std": self.std}
        return build_model(self.name, self.input_shape, self.num_classes, weights=weights,
                           **norm, **self.options, **weight_options)


def _normalisation(model: nn.Module) -> tuple[list[float] | None, list[float] | None]:
    norm = getattr(model, "normalize", None)
    if isinstance(norm, Normalize):
        return [float(f"{v:.7g}") for v in norm.mean.tolist()], [float(f"{v:.7g}") for v in norm.std.tolist()]
    return None, None


def build_model(name: str | ModelSpec, input_shape: Sequence[int], num_classes: int, weights: str | Path | None = None,
                *, allow_pickle: bool = False, finetune: bool = False, **options) -> nn.Module:
    """Build a model for inputs of ``input_shape`` (``(C,H,W)`` or ``(F,)``) and ``num_classes`` classes.

    ``name``: a native name (``small_cnn``, ``resnet20``, ``mlp``...), a paper short name (``resnet50``,
    ``densenet121``, ``vgg19``, ``efficientnet_b0``...), ``torchvision:<name>``, ``timm:<name>``, ``module:function``,
    or a :class:`ModelSpec`. ``weights``: a local file (:func:`~xaisec.models.zoo.load_model_weights`; ``.pth``
    only with ``allow_pickle``; ``finetune`` for pretrained weights of another task). ``mean``/``std`` override
    the input normalisation. The result's ``xaisec_spec`` attribute is its :class:`ModelSpec` (see :func:`model_spec`).
    """
    if isinstance(name, ModelSpec):
        return name.build(weights, allow_pickle=allow_pickle, finetune=finetune)
    factory = MODELS.get(name)
    input_shape = tuple(int(s) for s in input_shape)
    if factory is mlp:
        features = 1
        for s in input_shape:
            features *= s
        model = factory(in_features=features, num_classes=num_classes, **options)
    else:
        if len(input_shape) != 3:
            raise ModelError(f"model {name!r} needs image inputs (C,H,W), the data has shape {input_shape}; "
                             "use 'mlp' for tabular data")
        sized = {"image_size": input_shape[1:]} if getattr(factory, "func", None) is build_from_spec else {}
        try:
            model = factory(in_channels=input_shape[0], num_classes=num_classes, **sized, **options)
        except TypeError as exc:
            raise ModelError(f"model {name!r} does not take option(s) {sorted(options)}: {exc}") from exc
    if weights is not None:
        from .zoo import load_model_weights

        load_model_weights(model, weights, allow_pickle=allow_pickle, finetune=finetune)
    mean, std = _normalisation(model)
    arch_options = {k: v for k, v in options.items() if k not in ("mean", "std")}
    model.xaisec_spec = ModelSpec(name, input_shape, num_classes, arch_options, mean, std)
    return model


def model_spec(model: nn.Module) -> ModelSpec:
    """The :class:`ModelSpec` of a model made by :func:`build_model` (also inside DDP/compile wrappers)."""
    from .layers import unwrap_model

    spec = getattr(unwrap_model(model), "xaisec_spec", None)
    if not isinstance(spec, ModelSpec):
        raise ModelError(f"{type(model).__name__} was not built by xaisec.models.build_model, so it has no model spec")
    return spec
