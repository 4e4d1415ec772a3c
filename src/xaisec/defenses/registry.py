"""The registry of defenses: each defense registers itself with ``@DEFENSES.register("name")`` in its own file."""
from __future__ import annotations

from ..registry import Registry

DEFENSES = Registry("defense")
