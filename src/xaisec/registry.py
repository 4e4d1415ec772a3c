"""Name -> factory registries (datasets, models, explainers, ...), timm-style.

Everything that accepts "a name or an object" goes through :meth:`Registry.build`.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterator

from .errors import XaisecError


class Registry:
    """A named collection of factories of one kind (e.g. ``"explainer"``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None) -> Callable:
        """Decorator: ``@REGISTRY.register("gradcam")`` (default name: lowercased ``__name__``)."""

        def decorator(factory: Callable) -> Callable:
            key = (name or factory.__name__).lower()
            if key in self._entries:
                raise KeyError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``; unknown names raise with close suggestions."""
        if not isinstance(name, str):
            raise XaisecError(f"{self.kind} name must be a string, got {type(name).__name__}")
        key = name.lower()
        if key not in self._entries:
            close = difflib.get_close_matches(key, self._entries, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise XaisecError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}."
            )
        return self._entries[key]

    def build(self, name_or_obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Build from a registered name, or return ``name_or_obj`` unchanged if it is not a string."""
        if isinstance(name_or_obj, str):
            return self.get(name_or_obj)(*args, **kwargs)
        return name_or_obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
