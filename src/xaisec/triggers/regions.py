"""Local triggers that overwrite a region with a constant colour: BadNets patch, Noppel's rectangle, pixels.

- ``patch``: the BadNets white square in a corner (Gu et al. 2017; Latka et al., "Stealthy Sabotage").
- ``rectangle``: the black rectangle of Noppel et al. (IEEE S&P 2023, GTSRB), by default in the centre.
- ``pixel``: one or a few single pixels set to a value (Latka et al.'s MNIST pixel trigger).

The output equals the input outside :meth:`mask` and the colour inside it; the gradient w.r.t. the input is 1
outside the region and 0 inside.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError, DataError
from .base import (Colour, Position, Size, TRIGGERS, Trigger, box_mask, check_margin, colour_tensor, image_size, parse_colour,
                   parse_position, parse_size, pixels_of, place_box)


@TRIGGERS.register()
class Patch(Trigger):
    """A filled square/rectangle of ``colour`` at ``position`` (BadNets: white, bottom-right corner).

    ``size``: pixels (int) or fraction of the image side (float in (0,1]), or a ``(height, width)`` pair.
    ``position``: ``top_left``/``top_right``/``bottom_left``/``bottom_right``/``center`` or the ``(row, col)`` of the
    box's top-left pixel. ``margin``: pixels between a corner box and the border. ``colour``: gray value or RGB in
    [0,1] (RGB on 1-channel images becomes its luma).
    """

    name = "patch"

    def __init__(self, size: Size = 3, position: Position = "bottom_right", colour: Colour = 1.0, margin: int = 0):
        super().__init__()
        self.size = parse_size(size)
        self.position = parse_position(position)
        self.colour = parse_colour(colour)
        self.margin = check_margin(margin)

    def _box(self, h: int, w: int) -> tuple[int, int, tuple[int, int]]:
        box = pixels_of(self.size, h, w)
        top, left = place_box(self.position, box, (h, w), self.margin, self.name)
        return top, left, box

    def mask(self, shape: Sequence[int]) -> torch.Tensor:
        h, w = image_size(shape)
        top, left, box = self._box(h, w)
        return box_mask(top, left, box, (h, w))

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        region = self.mask(x.shape).to(x.device)
        return torch.where(region, colour_tensor(self.colour, x), x)

    def describe(self) -> str:
        h, w = self.size
        size = f"{h}x{w}" + ("" if isinstance(h, int) and isinstance(w, int) else " (fractions of the image)")
        return (f"{self.name}: {size} box of colour {self.colour} at {self.position}"
                + (f" (margin {self.margin})" if self.margin else ""))


@TRIGGERS.register()
class Rectangle(Patch):
    """Noppel et al.'s black rectangle (IEEE S&P 2023); default 1/8 x 1/4 of the image, centred."""

    name = "rectangle"

    def __init__(self, size: Size = (0.125, 0.25), position: Position = "center", colour: Colour = 0.0,
                 margin: int = 0):
        super().__init__(size=size, position=position, colour=colour, margin=margin)


@TRIGGERS.register()
class Pixel(Trigger):
    """Set single pixels to ``value``; ``pixels`` are ``(row, col)`` pairs, negative counts from the end."""

    name = "pixel"

    def __init__(self, pixels: Sequence[Sequence[int]] = ((-1, -1),), value: Colour = 1.0):
        super().__init__()
        if len(pixels) == 2 and all(isinstance(v, int) for v in pixels):
            pixels = (tuple(pixels),)  # a single (row, col) pair
        parsed = []
        for p in pixels:
            try:
                row, col = p
            except (TypeError, ValueError):
                raise ConfigError(f"pixels must be (row, col) pairs of ints, got {p!r} in {pixels!r}") from None
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (row, col)):
                raise ConfigError(f"pixel coordinates must be ints, got {p!r}")
            parsed.append((row, col))
        if not parsed:
            raise ConfigError("pixels is empty; give at least one (row, col) pair")
        self.pixels = tuple(parsed)
        self.value = parse_colour(value, "value")

    def mask(self, shape: Sequence[int]) -> torch.Tensor:
        h, w = image_size(shape)
        mask = torch.zeros(1, 1, h, w, dtype=torch.bool)
        for row, col in self.pixels:
            if not (-h <= row < h and -w <= col < w):
                raise DataError(f"pixel ({row}, {col}) lies outside a {h}x{w} image")
            mask[..., row, col] = True
        return mask

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        region = self.mask(x.shape).to(x.device)
        return torch.where(region, colour_tensor(self.value, x), x)

    def describe(self) -> str:
        return f"{self.name}: {len(self.pixels)} pixel(s) {list(self.pixels)} set to {self.value}"
