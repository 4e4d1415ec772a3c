"""The config reference, generated from the config schemas themselves (so it cannot drift from the code).

For every experiment kind: each key (dotted), its type, its default, the allowed values of ``Literal`` keys, and
one line of meaning taken from the ``#:`` comment above the field in its dataclass (or ``field(metadata={"help":
...})``). ``xaisec config reference`` prints it; ``docs/config_reference.md`` is its output.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from typing import Any, Literal, Union

_COMMENT = re.compile(r"^\s*#:\s?(.*)$")
_FIELD = re.compile(r"^\s*(\w+)\s*:")


@functools.lru_cache(maxsize=None)
def field_help(cls: type) -> dict[str, str]:
    """``{field: help}`` from ``#:`` comments directly above each field of dataclass ``cls`` (and its bases)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        pending: list[str] = []
        for line in lines:
            comment = _COMMENT.match(line)
            if comment:
                pending.append(comment.group(1).strip())
                continue
            match = _FIELD.match(line)
            if match and pending:
                out[match.group(1)] = " ".join(pending)
            if line.strip():
                pending = []
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            out[f.name] = f.metadata["help"]
    return out


def _type_text(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (Union, getattr(__import__("types"), "UnionType", Union)):
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(_type_text(a) for a in inner)
        return f"{text} or null" if type(None) in args else text
    if origin in (list, tuple):
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return None if dataclasses.is_dataclass(value) else value
    return None


def rows(schema: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(key, type, default, meaning)`` for every key of ``schema``, sections expanded in place."""
    hints = typing.get_type_hints(schema)
    helps = field_help(schema)
    out = []
    for f in dataclasses.fields(schema):
        if not f.init:
            continue
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            doc = inspect.getdoc(tp) or ""
            out.append((key, "section", "", helps.get(f.name) or doc.split("\n\n")[0].replace("\n", " ")))
            out += rows(tp, f"{key}.")
        else:
            default = _default(f)
            out.append((key, _type_text(tp), "null" if default is None else repr(default), helps.get(f.name, "")))
    return out


def markdown(kinds: dict[str, type]) -> str:
    """The whole reference as markdown, one table per experiment kind."""
    parts = ["# Config reference", "",
             "Generated from the config schemas (`xaisec config reference`); every key, its type, its default and "
             "what it means. A config file sets any of these keys (`base: NAME` starts from a packaged config), "
             "`key=value` on the command line overrides them, and `xaisec config show CONFIG` prints the resolved "
             "config with every default filled in.", ""]
    for name, schema in kinds.items():
        doc = (inspect.getdoc(schema) or "").split("\n\n")[0].replace("\n", " ")
        parts += [f"## `experiment: {name}`", "", doc, "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, tp, default, meaning in rows(schema):
            cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
            parts.append(f"| `{key}` | {cell(tp)} | {cell(default)} | {cell(meaning)} |")
        parts.append("")
    return "\n".join(parts)


def packaged_schemas() -> dict[str, type]:
    """``{kind: schema}`` of the experiment kinds xaisec ships (kinds registered by user code are left out)."""
    from .runs import load_kinds

    kinds = load_kinds()
    schemas = {name: kinds.get(name).schema for name in kinds.names()}
    return {name: schema for name, schema in schemas.items() if schema.__module__.startswith("xaisec.")}
