"""One record format for every number a run reports: :class:`Metric` (value, direction, description, std).

``metrics.json`` of every experiment kind maps flat keys (``attacked/gradcam/fsr``) to these records; the
direction says which way is better from the attacker's point of view (``higher``/``lower``), or ``none``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DIRECTIONS = ("higher", "lower", "none")


@dataclass
class Metric:
    """One number with its direction (``higher``/``lower``/``none``) and a one-line description."""

    value: float | None
    direction: str
    description: str
    std: float | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"Metric direction must be one of {DIRECTIONS}, got {self.direction!r}")

    def as_dict(self) -> dict:
        out = {"value": _round(self.value), "direction": self.direction, "description": self.description}
        if self.std is not None:
            out["std"] = _round(self.std)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Metric":
        return cls(data.get("value"), data.get("direction", "none"), data.get("description", ""), data.get("std"))


def _round(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else round(v, 6)
