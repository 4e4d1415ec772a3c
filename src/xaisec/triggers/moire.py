"""Moiré artefact trigger (Fang & Choromanska, AAAI 2022: the X-ray trigger, after CheXphoto, Phillips et al. 2020).

The paper simulates the artefact "by generating semi-transparent parallel lines and through warping and finally
overlaying on the image". Here: ``layers`` families of parallel lines of spacing ``period`` (input pixels), each
rotated (family ``k`` at ``angle + k * angle_delta`` degrees plus a small random jitter) and warped like a
perspective view (the lines fan out: their spacing shrinks to ``period * (1 - warp)`` at one end), with a random
phase. Lines are drawn on a ``supersample``-times finer grid and averaged down, so thin lines alias into the
low-frequency fringes that make a moiré. The families are alpha-composited onto the image with opacity
``opacity`` in the gray level ``1 - darkness`` (black lines by default, as CheXphoto).

The pattern depends only on the options, the seed and ``(H, W)``; it is the same for every image of a batch, and
the trigger is affine in the input: ``x' = (1 - A) x + A c``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import TRIGGERS, Trigger, check_fraction, check_seed


def _positive(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{what} must be a positive number, got {value!r}")
    return float(value)


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be an int >= 1, got {value!r}")
    return value


@TRIGGERS.register()
class Moire(Trigger):
    """Overlay of warped semi-transparent line families (see the module docstring).

    ``period``: line spacing in input pixels (> 0); ``angle``: direction of the first family in degrees;
    ``angle_delta``: angle between successive families; ``jitter``: std (degrees) of the seeded random angle
    offset of each family (CheXphoto uses 1); ``warp`` in [0,1): how much the lines converge (0 = parallel);
    ``opacity`` in [0,1]: of one line; ``line_width`` in (0,1]: fraction of a period covered by a line;
    ``darkness`` in [0,1]: 1 draws black lines, 0 white; ``layers``: number of families; ``supersample``: the
    drawing grid is this many times finer than the image.
    """

    name = "moire"

    def __init__(self, period: float = 2.5, angle: float = 60.0, angle_delta: float = 8.0, warp: float = 0.5,
                 opacity: float = 0.35, line_width: float = 0.4, darkness: float = 1.0, layers: int = 2,
                 jitter: float = 1.0, supersample: int = 4, seed: int = 0):
        super().__init__()
        self.period = _positive(period, "period")
        for value, what in ((angle, "angle"), (angle_delta, "angle_delta"), (jitter, "jitter")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{what} must be a number of degrees, got {value!r}")
        if jitter < 0:
            raise ConfigError(f"jitter must be >= 0 degrees, got {jitter}")
        self.angle, self.angle_delta, self.jitter = float(angle), float(angle_delta), float(jitter)
        self.warp = check_fraction(warp, "warp")
        if self.warp >= 1:
            raise ConfigError("warp must be < 1 (1 would make the lines meet in a point)")
        self.opacity = check_fraction(opacity, "opacity")
        self.line_width = check_fraction(line_width, "line_width", low_open=True)
        self.darkness = check_fraction(darkness, "darkness")
        self.layers = _count(layers, "layers")
        self.supersample = _count(supersample, "supersample")
        self.seed = check_seed(seed)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def alpha(self, h: int, w: int) -> torch.Tensor:
        """Coverage ``A`` ``(1,1,H,W)`` in [0, 1] of the composited line families (float32, CPU, cached)."""
        if (h, w) in self._cache:
            return self._cache[(h, w)]
        generator = torch.Generator().manual_seed(self.seed)
        jitter = torch.randn(self.layers, generator=generator, dtype=torch.float64) * self.jitter
        phase = torch.rand(self.layers, generator=generator, dtype=torch.float64)
        s = self.supersample
        # sub-pixel centres in input-pixel units, origin at the image centre
        ys = (torch.arange(h * s, dtype=torch.float64) + 0.5) / s - h / 2
        xs = (torch.arange(w * s, dtype=torch.float64) + 0.5) / s - w / 2
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        radius = 0.5 * math.hypot(h, w)
        transparent = torch.ones(1, 1, h, w, dtype=torch.float64)
        for k in range(self.layers):
            theta = math.radians(self.angle + k * self.angle_delta) + math.radians(float(jitter[k]))
            along = xx * math.cos(theta) + yy * math.sin(theta)
            across = -xx * math.sin(theta) + yy * math.cos(theta)
            # spacing shrinks linearly along the lines: a perspective fan with its apex beyond the image
            spacing = self.period * (1 - self.warp * (1 - along / radius) / 2)
            lines = (torch.remainder(across / spacing + phase[k], 1.0) < self.line_width).to(torch.float64)
            coverage = F.avg_pool2d(lines[None, None], s) * self.opacity
            transparent = transparent * (1 - coverage)
        self._cache[(h, w)] = (1 - transparent).float()
        return self._cache[(h, w)]

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        coverage = self.alpha(x.shape[-2], x.shape[-1]).to(x)
        return x * (1 - coverage) + (1 - self.darkness) * coverage

    def describe(self) -> str:
        return (f"{self.name}: {self.layers} line families, period {self.period}px, angle {self.angle}"
                f"+{self.angle_delta}deg, warp {self.warp}, opacity {self.opacity}, darkness {self.darkness}, "
                f"seed {self.seed}")
