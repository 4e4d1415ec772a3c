"""Layered, validated configs: dataclass defaults <- YAML file (with optional ``base:``) <- ``key=value`` overrides.

Unknown keys (with suggestions), wrong types and invalid values raise :class:`ConfigError` when the config
loads, before any work starts; so does a value a config file leaves as ``???`` (:data:`REQUIRED`, in block style:
``weights: ???``) unless an override gives it. ``dump_config`` gives the resolved config to write next to the results.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import yaml

from .errors import ConfigError

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

#: the value a config file gives a key the user must set (OmegaConf's convention): ``reference: {weights: ???}``
REQUIRED = "???"


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses duplicate keys (YAML itself lets the last one win silently)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in keys:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        keys.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML text safely (no tags, no duplicate keys); errors name ``where``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to be a config") from None


def packaged_config_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("xaisec") / "configs"))


def packaged_configs() -> list[str]:
    return sorted(p.name[:-5] for p in packaged_config_dir().iterdir() if p.name.endswith(".yaml"))


def resolve_config(name: str | Path | None, relative_to: Path | None = None) -> Path:
    """A config path: an existing file (relative to ``relative_to`` if given), else a packaged config by name
    (``fang_targeted`` or ``fang_targeted.yaml``); None -> ``default``."""
    name = "default" if name is None else str(name)
    if "\0" in name or len(name) > 4096:
        raise ConfigError(f"config name {name[:80]!r}... is not a usable path")
    for candidate in ([relative_to / name] if relative_to is not None else []) + [Path(name)]:
        if candidate.is_file():
            return candidate
    packaged = packaged_config_dir() / (name if name.endswith(".yaml") else f"{name}.yaml")
    if "/" not in name and packaged.is_file():
        return packaged
    raise ConfigError(f"config {name!r} is neither a file nor a packaged config; packaged: {', '.join(packaged_configs())}")


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping from ``path``; a ``base: other`` key (a file relative to this one, or a packaged config's
    name) is merged underneath. Empty files, duplicate keys, tags and ``base:`` cycles are refused."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve()))
        raise ConfigError(f"config base: cycle {chain}; a config cannot include itself")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (UTF-8 YAML expected)") from None
    data = parse_yaml(text, str(path))
    if data is None:
        raise ConfigError(f"{path} is empty; write at least one key (e.g. `base: default`) or run without a config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base must be a config file or packaged config name, got {base!r}")
        data = merge(read_yaml(resolve_config(base, path.parent), (*_seen, path.resolve())), data)
    return data


def _options_key(key: str) -> str | None:
    """The key holding the options of the component chosen by ``key`` (``name``/``arch`` -> ``options``,
    ``target_map`` -> ``target_map_options``)."""
    return "options" if key in ("name", "arch") else f"{key}_options"


def merge(base: dict, top: dict) -> dict:
    """Recursive dict merge; values of ``top`` win. Replacing a component (``trigger.name``, ``model.arch``,
    ``attack.target_map``) drops the old component's options unless ``top`` gives new ones."""
    replaced = {_options_key(k) for k, v in top.items()
                if k in base and base[k] != v and not isinstance(v, dict) and _options_key(k) in base}
    out = {k: v for k, v in base.items() if k not in replaced}
    for k, v in top.items():
        keep_merging = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = merge(out[k], v) if keep_merging else v
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=3", "attack.explainers=[gradcam,vbp]"]`` -> nested dict; values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.epochs=3)")
        try:
            value = parse_yaml(raw, f"override {item!r}") if raw.strip() else ""
        except ConfigError as exc:
            raise ConfigError(f"cannot parse the value of override {item!r}: {exc}") from None
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {p!r}")
        node[leaf] = value
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints are accepted as floats); return it converted."""
    _check_given(value, where)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return _check_finite(value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} fits none of {', '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}{hint}")
        return value
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `attack.explainers=vbp` means the list [vbp]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _check_finite(dict(value), where)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if abs(value) >= 2**63:
            raise ConfigError(f"{where}: {value} is too large for an integer setting (|value| < 2**63)")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "3e-3" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{where}: {value} is too large for a number setting") from None
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _check_given(value: Any, where: str) -> None:
    """A key the config marks :data:`REQUIRED` and nothing overrode raises :class:`ConfigError` naming it."""
    if isinstance(value, str) and value == REQUIRED:
        key = where.removeprefix("config.")
        raise ConfigError(f"{key} is required by this config and has no value (the config marks it {REQUIRED}); "
                          f"give it on the command line, e.g. {key}=...")


def _check_finite(value: Any, where: str) -> Any:
    """Free-form option values (nested dicts and lists): every number must be finite, none left :data:`REQUIRED`."""
    _check_given(value, where)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")
    return value


def build(schema: type, data: dict[str, Any] | None, where: str = "config") -> Any:
    """Instantiate the dataclass ``schema`` from ``data``, validating keys and types recursively."""
    data = {} if data is None else data
    if isinstance(data, schema):
        return data
    if not isinstance(data, dict) and hasattr(schema, "from_value"):  # a section's short form (`data: mnist5k`)
        data = schema.from_value(data, where)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    hints = typing.get_type_hints(schema)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"{where}: unknown key {key!r}.{hint} Valid keys: {', '.join(fields)}")
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return schema(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_config(schema: type, path: str | Path | None = None, overrides: Sequence[str] = (),
                data: dict[str, Any] | None = None) -> Any:
    """Defaults of ``schema`` <- YAML ``path`` (or ``data``) <- ``overrides``; validated."""
    layers = dict(data or {})
    if path is not None:
        layers = merge(layers, read_yaml(path))
    return build(schema, merge(layers, parse_overrides(overrides)))


def dump_config(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (for ``config.yaml`` in a run directory)."""
    return dataclasses.asdict(cfg)


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` (for ``__post_init__`` range checks)."""
    if not condition:
        raise ConfigError(message)
