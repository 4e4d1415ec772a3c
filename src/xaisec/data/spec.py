"""One way to name data everywhere (``xaisec audit --data``, ``xaisec explain --dataset``, ``data:`` in run configs).

String form::

    mnist5k                              a registered dataset (``xaisec list datasets``)
    cifar10:root=/data/cifar,size=64     ... with options (values read as YAML scalars: 64 -> int, true -> bool)
    path/to/file.npz                     arrays x, y (optional x_test, y_test); also npz:path=FILE
    path/to/image_folder                 class folders; also imagefolder:root=DIR,size=64,channels=1

Mapping form (YAML): ``{name: cifar10, options: {root: /data/cifar}}``.

:func:`parse_data_spec` turns either into a :class:`DataSpec` and checks the option names against the loader's
signature (a missing ``root`` is an error naming it, not a ``TypeError``); :func:`load_data` loads it, taking an
image size the caller does not set from the shape the model expects, and explains a shape mismatch in terms of the
``size=``/``channels=`` options.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..errors import DataError, XaisecError
from . import DATASETS
from .base import ImageDataset

#: keys of the mapping form
SPEC_KEYS = ("name", "options")


@dataclass(frozen=True)
class DataSpec:
    """A registered dataset ``name`` (``npz`` and ``imagefolder`` included) with its loader ``options``."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        """The string form, e.g. ``cifar10:root=/data/cifar`` (an ``.npz`` file is written as its path)."""
        if self.name == "npz" and set(self.options) == {"path"}:
            return str(self.options["path"])
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_scalar(v)}" for k, v in self.options.items())


def _scalar(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_data_spec(spec: str | Path | Mapping[str, Any] | DataSpec) -> DataSpec:
    """A :class:`DataSpec` from the string form, a path, the mapping form or a DataSpec (see the module docstring).

    Unknown dataset names (with suggestions), unknown or missing options and malformed text raise
    :class:`~xaisec.errors.DataError`."""
    if isinstance(spec, DataSpec):
        parsed = spec
    elif isinstance(spec, Mapping):
        parsed = _from_mapping(spec)
    elif isinstance(spec, (str, Path)):
        parsed = _from_text(str(spec))
    else:
        raise DataError(f"data must be a name, a path or a mapping {{name: ..., options: {{...}}}}, "
                        f"got {type(spec).__name__}")
    check_options(parsed)
    return parsed


def _from_mapping(spec: Mapping[str, Any]) -> DataSpec:
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise DataError(f"data mapping has unknown key(s) {unknown}; write {{name: NAME, options: {{key: value}}}}")
    name, options = spec.get("name"), spec.get("options") or {}
    if not isinstance(name, str) or not name:
        raise DataError(f"data mapping needs a dataset name (name: mnist5k, a path to an .npz file or an image "
                        f"folder), got name={name!r}")
    if not isinstance(options, Mapping):
        raise DataError(f"data options must be a mapping of option names to values, got {options!r}")
    from_path = _from_text(name) if not options else None  # {name: path/to/file.npz} reads like the string form
    if from_path is not None and from_path.name in ("npz", "imagefolder"):
        return from_path
    return DataSpec(name.strip().lower(), dict(options))


def _from_text(text: str) -> DataSpec:
    text = text.strip()
    if not text:
        raise DataError(f"data is empty; give a dataset name ({', '.join(DATASETS.names())}), an .npz file or an "
                        "image folder")
    name, _, rest = text.partition(":")
    name = name.strip().lower()
    if name not in DATASETS:  # a registered name wins over a file of that name: write ./NAME for the file
        path = Path(text).expanduser()
        if path.suffix.lower() == ".npz":
            return DataSpec("npz", {"path": text})
        if path.is_dir():
            return DataSpec("imagefolder", {"root": text})
        if any(c in text for c in "/\\.~") and not rest:
            raise DataError(f"data path {text} does not exist (give an existing .npz file or image folder, or a "
                            f"dataset name: {', '.join(DATASETS.names())})")
        try:
            DATASETS.get(name)
        except XaisecError as exc:
            raise DataError(f"{exc} Or give an .npz file or an image folder.") from None
    options: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in _split_options(rest))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise DataError(f"cannot read data option {item!r} in {text!r}; write NAME:key=value,key=value")
        try:
            options[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            raise DataError(f"cannot read the value of data option {key.strip()!r} in {text!r}: {exc}") from None
    return DataSpec(name, options)


def _split_options(rest: str) -> list[str]:
    """Split ``a=1,size=[64,48]`` at the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(rest):
        depth += c in "[("
        depth -= c in "])"
        if c == "," and depth == 0:
            items.append(rest[start:i])
            start = i + 1
    items.append(rest[start:])
    return items


def _loader_parameters(name: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(DATASETS.get(name)).parameters)


def check_options(spec: DataSpec) -> None:
    """Option names against the loader's signature: unknown ones and missing required ones raise a DataError that
    names them and says how to write them."""
    params = _loader_parameters(spec.name)
    unknown = sorted(k for k in spec.options if k not in params)
    if unknown:
        raise DataError(f"dataset {spec.name!r} has no option(s) {', '.join(unknown)}; accepted: "
                        f"{', '.join(params) or 'none'}")
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in spec.options]
    if missing:
        example = ",".join(f"{p}=..." for p in missing)
        raise DataError(f"dataset {spec.name!r} needs option(s) {', '.join(missing)}: write {spec.name}:{example} "
                        f"(YAML: {{name: {spec.name}, options: {{{', '.join(f'{p}: ...' for p in missing)}}}}})")


def load_data(spec: str | Path | Mapping[str, Any] | DataSpec, *,
              expect_shape: Sequence[int] | None = None) -> ImageDataset:
    """Load the data ``spec`` names (see :func:`parse_data_spec`).

    ``expect_shape``: the ``(C,H,W)`` input shape of the model the data is for, when the model tells. Loaders that
    resize (image folders, CIFAR-10, GTSRB, ...) then take their ``size`` and ``channels`` from it unless the spec
    sets them, and data of another shape raises a DataError that says which options to set."""
    spec = parse_data_spec(spec)
    options = dict(spec.options)
    params = _loader_parameters(spec.name)
    if expect_shape is not None and len(expect_shape) == 3:
        if "size" in params:
            options.setdefault("size", tuple(int(s) for s in expect_shape[1:]))
        if "channels" in params:
            options.setdefault("channels", int(expect_shape[0]))
    try:
        data = DATASETS.get(spec.name)(**options)
    except TypeError as exc:  # a loader's own type checks; the names were checked above
        raise DataError(f"dataset {spec.name!r} cannot use the options {options}: {exc}") from exc
    if expect_shape is not None and tuple(data.input_shape) != tuple(expect_shape):
        raise DataError(shape_mismatch(spec, tuple(data.input_shape), tuple(expect_shape)))
    return data


def shape_mismatch(spec: DataSpec, got: tuple[int, ...], expected: tuple[int, ...]) -> str:
    """The message for data of input shape ``got`` given to a model that expects ``expected``: which of the
    loader's options (``size=``, ``channels=``) would fix it."""
    text = f"data {spec} gives inputs of shape {got}, but the model expects {expected}."
    params = _loader_parameters(spec.name)
    fix = {}
    if len(expected) == 3 and len(got) == 3:
        if "size" in params and got[1:] != expected[1:]:
            fix["size"] = expected[1] if expected[1] == expected[2] else list(expected[1:])
        if "channels" in params and got[0] != expected[0]:
            fix["channels"] = expected[0]
    if fix:
        fixed = DataSpec(spec.name, {**spec.options, **fix})
        yaml_options = ", ".join(f"{k}: {_scalar(v)}" for k, v in fixed.options.items())
        return (text + f" Set {' and '.join(f'{k}=' for k in fix)} in the data options: {fixed} (YAML: "
                f"{{name: {spec.name}, options: {{{yaml_options}}}}})")
    if spec.name == "npz":
        return text + " Save the arrays at the model's input size (x of shape (N, C, H, W))."
    return text + (" This dataset has no size= or channels= option; give data of the size the model was trained on, "
                   "or an image folder / .npz file resized to it.")
