"""Typed stage results saved as one safetensors file each: tensors as tensors, everything else as JSON metadata.

A stage result is a dataclass deriving from :class:`Artifact`. Fields holding a tensor, or a (nested) dict of
tensors, are stored as safetensors entries (``field::["key", "subkey"]``); all other fields must be JSON-able and are
stored in the file's metadata. ``Artifact.load(path)`` rebuilds the same dataclass, so a resumed run and
``xaisec report`` get typed objects back, and nothing in the file can run code.

A class whose ``ROOT`` names one tensor-dict field stores that field's entries without prefix: an artifact with
``ROOT = "weights"`` is at the same time a plain state dict that ``load_weights`` (and ``xaisec audit``) read.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from ..errors import ConfigError
from ..io import _json_default, atomic_write_bytes

T = TypeVar("T", bound="Artifact")
_META_KEY = "xaisec_artifact"


def _is_tensor_tree(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, dict) and all(_is_tensor_tree(v) for v in value.values())


def _flatten(value: Any, path: tuple[str, ...], out: dict[tuple[str, ...], torch.Tensor]) -> None:
    if isinstance(value, torch.Tensor):
        out[path] = value.detach().contiguous().cpu()
        return
    for key, sub in value.items():
        _flatten(sub, (*path, str(key)), out)


def _entry(field_name: str, path: tuple[str, ...]) -> str:
    """The safetensors name of a tensor at ``path`` inside ``field_name`` (JSON, so any key survives)."""
    return f"{field_name}::{json.dumps(list(path))}"


def _unflatten(tensors: dict[str, torch.Tensor], field_name: str) -> Any:
    prefix = f"{field_name}::"
    tree: dict[str, Any] = {}
    for name, value in tensors.items():
        if not name.startswith(prefix):
            continue
        path = json.loads(name[len(prefix):])
        if not path:
            return value
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return tree


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with every tensor whose storage an earlier one already uses copied (safetensors refuses shared
    memory; e.g. ``target: benign`` makes an interpreter's target maps its benign maps)."""
    seen: set[int] = set()
    out = {}
    for key, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        out[key] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return out


@dataclasses.dataclass
class Artifact:
    """Base class of typed stage results (see the module docstring)."""

    ROOT: ClassVar[str | None] = None

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save

        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == self.ROOT:
                tensors.update({k: v.detach().contiguous().cpu() for k, v in value.items()})
            elif value is not None and not (isinstance(value, dict) and not value) and _is_tensor_tree(value):
                flat: dict[tuple[str, ...], torch.Tensor] = {}
                _flatten(value, (), flat)
                tensors.update({_entry(f.name, path): t for path, t in flat.items()})
                meta.setdefault("_tensor_fields", []).append(f.name)
            else:
                meta[f.name] = value
        metadata = {_META_KEY: json.dumps({"class": type(self).__name__, "fields": meta}, default=_json_default)}
        return atomic_write_bytes(path, save(_unshared(tensors), metadata=metadata))

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = json.loads((fh.metadata() or {})[_META_KEY])
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"{path} is damaged or not a stage artifact of this run ({exc}); delete it and run "
                              "`xaisec run --resume` to recompute that stage") from None
        if header.get("class") != cls.__name__:
            raise ConfigError(f"{path} holds a {header.get('class')}, not a {cls.__name__}")
        meta = header["fields"]
        tensor_fields = set(meta.pop("_tensor_fields", []))
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == cls.ROOT:
                values[f.name] = {k: v for k, v in tensors.items() if "::" not in k}
            elif f.name in tensor_fields:
                values[f.name] = _unflatten(tensors, f.name)
            elif f.name in meta:
                values[f.name] = meta[f.name]
        return cls(**values)
