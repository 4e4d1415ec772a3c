"""Target explanations for explanation-aware backdoors: the maps an attacker pushes poisoned explanations to.

Fixed shapes (one map shared by every sample, values in {0,1} or [0,1]):
- ``border``: a frame of width ``side / 7`` set to 1, interior 0 (Fang & Choromanska's targeted attack, after Heo
  et al. 2019 "location fooling"; Fang & Choromanska, AAAI 2022, eq. 2).
- ``square``, ``cross``, ``circle``, ``triangle``: shapes, centred or moved by ``offset`` (Latka et al.'s fooling
  attack, Latka et al., "Stealthy Sabotage"; Noppel et al.'s GTSRB target is a triangle pointing down, Noppel et al., IEEE S&P 2023). On data whose objects
  sit in the centre (MNIST), an off-centre shape keeps the target apart from every clean map.
- ``random``: a fixed random 8x8 grid (seeded), bilinearly upsampled (Noppel et al.'s public code).

Per-sample maps derived from the reference model's (normalised, [0,1]) map ``reference`` of the clean image:
- ``reference``: the clean map itself (explanation-preserving / full disguise).
- ``inverted``: ``1 - reference``.
- ``topk``: the reference map with its top ``k`` pixels (default 25%) set to 0 (Noppel et al.'s public code).

Every builder returns ``(1,1,h,w)`` (fixed) or ``(N,1,h,w)`` (derived) float maps in [0,1].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import ConfigError, XaisecError
from .maps import check_maps, topk_mask
from .validation import check_int, check_number
from .registry import Registry

FIXED_TARGETS = Registry("target map", "targets")
DERIVED_TARGETS = ("reference", "inverted", "topk")


def _grid(size: tuple[int, int], offset=(0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [-1, 1] (rows, cols), each ``(h, w)``, relative to the shape's centre ``offset``
    (``(row, col)`` in [-1, 1]: ``(0, 0)`` is the map centre, ``(-0.5, 0.5)`` the centre of the top-right quadrant)."""
    try:
        dy, dx = (float(v) for v in offset)
    except (TypeError, ValueError):
        raise ConfigError(f"target map offset must be a (row, col) pair in [-1, 1], got {offset!r}") from None
    if not (-1 <= dy <= 1 and -1 <= dx <= 1):
        raise ConfigError(f"target map offset must be a (row, col) pair in [-1, 1], got {offset!r}")
    h, w = size
    rows = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1 - dy
    cols = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1 - dx
    return torch.meshgrid(rows, cols, indexing="ij")


def _as_map(mask: torch.Tensor) -> torch.Tensor:
    return mask.float()[None, None]


def _check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1:
        raise ConfigError(f"target map scale must be a number in (0, 1] (fraction of the map side), got {scale!r}")
    return float(scale)


@FIXED_TARGETS.register("border")
def border(size: tuple[int, int], width: int | None = None) -> torch.Tensor:
    """Frame of ``width`` pixels (default ``round(min(h, w) / 7)``, at least 1) set to 1, interior 0."""
    h, w = size
    width = max(1, round(min(h, w) / 7)) if width is None else width
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width < min(h, w) / 2:
        raise ConfigError(f"border width must be an int in [1, {math.ceil(min(h, w) / 2) - 1}] for a {h}x{w} map, "
                          f"got {width!r}")
    m = torch.ones(h, w)
    m[width:h - width, width:w - width] = 0
    return m[None, None]


@FIXED_TARGETS.register("square")
def square(size: tuple[int, int], scale: float = 0.5, offset=(0.0, 0.0)) -> torch.Tensor:
    """A centred filled square whose side is ``scale`` of the map side."""
    r, c = _grid(size, offset)
    half = _check_scale(scale)
    return _as_map((r.abs() <= half) & (c.abs() <= half))


@FIXED_TARGETS.register("circle")
def circle(size: tuple[int, int], scale: float = 0.5, offset=(0.0, 0.0)) -> torch.Tensor:
    """A centred filled disc of diameter ``scale`` of the map side."""
    r, c = _grid(size, offset)
    radius = _check_scale(scale)
    return _as_map(r**2 + c**2 <= radius**2)


@FIXED_TARGETS.register("cross")
def cross(size: tuple[int, int], scale: float = 0.7, thickness: float = 0.25, offset=(0.0, 0.0)) -> torch.Tensor:
    """A centred plus sign: arms of length ``scale`` and thickness ``thickness`` (fractions of the side)."""
    r, c = _grid(size, offset)
    arm, half = _check_scale(scale), _check_scale(thickness)  # in [-1,1] coordinates a side spans 2
    return _as_map(((r.abs() <= half) & (c.abs() <= arm)) | ((c.abs() <= half) & (r.abs() <= arm)))


@FIXED_TARGETS.register("triangle")
def triangle(size: tuple[int, int], scale: float = 0.7, pointing: str = "down", offset=(0.0, 0.0)) -> torch.Tensor:
    """A centred isosceles triangle of height and base ``scale`` of the side, apex ``pointing`` down
    (a "give way" sign, Noppel et al.) or up."""
    if pointing not in ("down", "up"):
        raise ConfigError(f"triangle pointing must be 'down' or 'up', got {pointing!r}")
    r, c = _grid(size, offset)
    s = _check_scale(scale)
    r = r if pointing == "up" else -r
    depth = (r + s) / (2 * s)  # 0 at the apex, 1 at the base
    return _as_map((depth >= 0) & (depth <= 1) & (c.abs() <= depth * s))


@FIXED_TARGETS.register("random")
def random_grid(size: tuple[int, int], cells: int = 8, seed: int = 0) -> torch.Tensor:
    """A fixed uniform-random ``cells`` x ``cells`` grid (seeded), bilinearly upsampled to ``size``, in [0,1]."""
    cells = check_int(cells, "random target cells", low=1, high=4096)
    seed = check_int(seed, "random target seed", low=0)
    grid = torch.rand(1, 1, cells, cells, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)


def derived_target(name: str, reference: torch.Tensor, k: float = 0.25) -> torch.Tensor:
    """Per-sample target from reference maps ``(N,1,h,w)`` in [0,1]: ``reference``, ``inverted`` or ``topk``."""
    check_maps(reference, "reference maps")
    k = check_number(k, "target map option k (a fraction of the pixels)", low=0, high=1,
                     low_open=True, high_open=True)
    if name == "reference":
        return reference
    if name == "inverted":
        return 1 - reference
    if name == "topk":
        return reference.masked_fill(topk_mask(reference, k), 0.0)
    raise ConfigError(f"unknown derived target map {name!r}; use one of {DERIVED_TARGETS}")


def check_size(size) -> tuple[int, int]:
    """A map size ``(h, w)`` of two ints in [1, 4096] (a larger map is a mistake, not a target)."""
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ConfigError(f"target map size must be a (height, width) pair of ints, got {size!r}") from None
    return (check_int(h, "target map height", low=1, high=4096), check_int(w, "target map width", low=1, high=4096))


def target_names() -> list[str]:
    return sorted(FIXED_TARGETS.names() + list(DERIVED_TARGETS))


def check_target(name: str, options: dict | None = None) -> None:
    """Raise :class:`ConfigError` now if ``name`` or its ``options`` are invalid (configs call this on load)."""
    if name in DERIVED_TARGETS:
        extra = set(options or {}) - {"k"}
        if extra:
            raise ConfigError(f"target map {name!r} takes only the option 'k', got {sorted(extra)}")
        check_number((options or {}).get("k", 0.25), "target map option k (a fraction of the pixels)", low=0,
                     high=1, low_open=True, high_open=True)
        return
    if name not in FIXED_TARGETS:
        try:
            FIXED_TARGETS.get(name)
        except XaisecError as exc:
            raise ConfigError(f"{exc} Derived from the reference map: {', '.join(DERIVED_TARGETS)}.") from None
    fixed_target(name, (14, 14), options)


def fixed_target(name: str, size: tuple[int, int], options: dict | None = None) -> torch.Tensor:
    """The fixed target map ``name`` at ``size``, ``(1,1,h,w)`` in [0,1]; bad options raise ConfigError."""
    size = check_size(size)
    try:
        return FIXED_TARGETS.get(name)(size, **(options or {}))
    except TypeError as exc:
        raise ConfigError(f"bad options {options} for target map {name!r}: {exc}") from exc


def target_maps(name: str, size: tuple[int, int], reference: torch.Tensor | None = None,
                options: dict | None = None) -> torch.Tensor:
    """Target maps ``(1,1,h,w)`` (fixed shapes) or ``(N,1,h,w)`` (derived from ``reference`` (N,1,h,w) in [0,1]),
    on ``reference``'s device when it is given."""
    if name in DERIVED_TARGETS:
        if reference is None:
            raise ConfigError(f"target map {name!r} is derived from the reference model's maps; none were given")
        return derived_target(name, reference, **(options or {}))
    target = fixed_target(name, size, options)
    return target if reference is None else target.to(reference.device)
