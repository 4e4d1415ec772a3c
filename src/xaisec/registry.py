"""Name -> factory registries (datasets, models, explainers, ...), timm-style, and the registry of registries.

Components register themselves with a decorator in the file that defines them (``@EXPLAINERS.register("gradcam")``).
Everything that accepts "a name or an object" goes through :meth:`Registry.build`, which checks options against
the factory's signature once for every registry. Every :class:`Registry` is listed in :data:`REGISTRIES` (what
``xaisec list`` walks); :data:`REGISTRY_MODULES` names the modules whose import fills them.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable, Iterable, Iterator

from .errors import XaisecError

#: every registry by its plural name (``"explainers"``), in creation order
REGISTRIES: dict[str, "Registry"] = {}

#: modules whose import registers the packaged components of every kind
REGISTRY_MODULES = ("xaisec.data", "xaisec.models", "xaisec.explainers", "xaisec.triggers", "xaisec.backdoor.recipes",
                    "xaisec.target_maps", "xaisec.evasion", "xaisec.defenses", "xaisec.audit")


class Registry:
    """A named collection of factories of one kind (e.g. ``"explainer"``)."""

    def __init__(self, kind: str, plural: str | None = None):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        REGISTRIES.setdefault(plural or f"{kind.replace(' ', '_')}s", self)

    def register(self, name: str | None = None) -> Callable:
        """Decorator: ``@REGISTRY.register("gradcam")``, in the file that defines the component (default name: the
        factory's ``name`` attribute, else its lowercased ``__name__``)."""

        def decorator(factory: Callable) -> Callable:
            own = getattr(factory, "name", None)
            key = (name or (own if isinstance(own, str) else None) or factory.__name__).lower()
            if key in self._entries:
                raise KeyError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``; unknown names raise with close suggestions."""
        if not isinstance(name, str):
            raise XaisecError(f"{self.kind} name must be a string, got {type(name).__name__} {name!r}")
        key = name.lower()
        if key not in self._entries:
            close = difflib.get_close_matches(key, self._entries, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise XaisecError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}."
            )
        return self._entries[key]

    def check_options(self, name: str, options: dict[str, Any], given: Iterable[str] = ()) -> None:
        """Raise :class:`XaisecError` if ``options`` names a keyword the factory of ``name`` does not take
        (``given``: arguments the caller passes itself, which are not options), with the closest names."""
        factory = self.get(name)
        target = factory.__init__ if inspect.isclass(factory) else factory
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            return
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return
        allowed = [p for p, v in params.items() if p not in ("self", *given) and v.kind != v.VAR_POSITIONAL]
        for key in options:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=3, cutoff=0.5)
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise XaisecError(f"{self.kind} {name!r} has no option {key!r}.{hint} Its options: "
                                  f"{', '.join(allowed) or 'none'}")

    def missing_options(self, name: str, options: dict[str, Any], given: Iterable[str] = ()) -> list[str]:
        """The factory's required keyword arguments (no default) that neither ``options`` nor ``given`` supply."""
        factory = self.get(name)
        try:
            params = inspect.signature(factory.__init__ if inspect.isclass(factory) else factory).parameters
        except (TypeError, ValueError):
            return []
        return [p for p, v in params.items() if p != "self" and v.default is v.empty and p not in options
                and p not in given and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]

    def build(self, name_or_obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Build from a registered name (keyword options checked against the factory's signature first), or
        return ``name_or_obj`` unchanged if it is not a string."""
        if isinstance(name_or_obj, str):
            self.check_options(name_or_obj, kwargs)
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


def all_registries() -> dict[str, Registry]:
    """Every registry, after importing the modules that fill them."""
    for module in REGISTRY_MODULES:
        importlib.import_module(module)
    importlib.import_module("xaisec.runs").load_kinds()
    return dict(REGISTRIES)
