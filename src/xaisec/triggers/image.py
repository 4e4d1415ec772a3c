"""Pattern triggers: ``blend`` (alpha-blend the whole image with noise or a picture) and ``image`` (a user's
own trigger picture, with an optional mask or alpha channel, pasted or blended at a position).

``blend`` follows the blended-injection trigger of Chen et al. 2017 ("Targeted backdoor attacks on deep
learning systems using data poisoning"): ``x' = (1 - alpha) x + alpha p``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..data.images import IMAGE_READ_ERRORS
from ..errors import ConfigError, DataError
from ..validation import check_images
from .base import (Position, TRIGGERS, Trigger, check_fraction, check_margin, check_seed, image_size, match_channels,
                   parse_position, parse_size, place_box, resize)

ImageLike = Union[str, Path, torch.Tensor, np.ndarray]
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
#: 4096 x 4096: larger than any input xaisec works on (a trigger larger than the input is an error anyway)
MAX_TRIGGER_PIXELS = 4096 * 4096


def load_image_file(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read a PNG/JPEG (any PIL format) as ``(1,C,h,w)`` float32 in [0,1] (C = 1 or 3) and its alpha
    ``(1,1,h,w)`` (``None`` without an alpha channel)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"trigger image {str(path)!r} does not exist; check the path")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_TRIGGER_PIXELS:  # header only: nothing decoded yet
                raise DataError(f"trigger image {str(path)!r} is {im.width}x{im.height} pixels; a trigger must fit the "
                                f"input images, so at most {MAX_TRIGGER_PIXELS} pixels are read. Resize it first")
            im.load()
    except (UnidentifiedImageError, *IMAGE_READ_ERRORS) as exc:
        raise DataError(f"cannot read trigger image {str(path)!r} ({exc}); use a PNG or JPEG file") from None
    gray = im.mode in _GRAY_MODES
    has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    im = im.convert(("LA" if gray else "RGBA") if has_alpha else ("L" if gray else "RGB"))
    array = np.asarray(im, dtype=np.float32) / 255.0
    array = array[..., None] if array.ndim == 2 else array
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)
    if has_alpha:
        return tensor[:, :-1].contiguous(), tensor[:, -1:].contiguous()
    return tensor, None


def as_pattern(image: ImageLike, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A file path or an array ``(h,w)``, ``(C,h,w)`` or ``(1,C,h,w)`` in [0,1] -> ``((1,C,h,w), alpha or None)``."""
    if isinstance(image, (str, Path)):
        return load_image_file(image)
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, torch.Tensor):
        raise ConfigError(f"{what} must be a file path or a tensor, got {type(image).__name__}")
    image = image.detach()
    if image.dim() == 2:
        image = image[None, None]
    elif image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise DataError(f"{what} has shape {tuple(image.shape)}; expected (h,w), (C,h,w) or (1,C,h,w)")
    return check_images(image, what).float().clone(), None


def _source_name(image: ImageLike) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"{type(image).__name__} {tuple(image.shape)}"


@TRIGGERS.register()
class Blend(Trigger):
    """``x' = (1 - alpha) x + alpha p`` with ``p`` uniform noise fixed by ``seed`` (``pattern="noise"``) or a
    picture (path or tensor, resized to the input with antialiased bilinear interpolation)."""

    name = "blend"

    def __init__(self, pattern: ImageLike = "noise", alpha: float = 0.2, seed: int = 0):
        super().__init__()
        self.alpha = check_fraction(alpha, "alpha")
        self.seed = check_seed(seed)
        noise = isinstance(pattern, str) and pattern == "noise"
        image = None if noise else as_pattern(pattern, "blend pattern")[0]
        self.source = "noise" if noise else _source_name(pattern)
        self.register_buffer("image", image, persistent=False)
        self._noise: dict[tuple[int, int, int], torch.Tensor] = {}

    def pattern(self, shape: Sequence[int]) -> torch.Tensor:
        """The ``(1,C,H,W)`` pattern blended into inputs of shape ``(B,C,H,W)``."""
        channels, (h, w) = int(shape[-3]), image_size(shape)
        if self.image is not None:
            return match_channels(resize(self.image, (h, w)), channels, "blend pattern")
        key = (channels, h, w)
        if key not in self._noise:  # fixed per seed and size, independent of device and of earlier calls
            generator = torch.Generator().manual_seed(self.seed)
            self._noise[key] = torch.rand(1, channels, h, w, generator=generator)
        return self._noise[key]

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - self.alpha) * x + self.alpha * self.pattern(x.shape).to(x)

    def describe(self) -> str:
        seed = f", seed {self.seed}" if self.source == "noise" else ""
        return f"{self.name}: alpha {self.alpha} with {self.source}{seed}"


@TRIGGERS.register()
class ImageTrigger(Trigger):
    """A user's trigger picture pasted at ``position``: ``x' = (1 - a m) x + a m p`` on the picture's box.

    ``image``: PNG/JPEG path or tensor ``(h,w)``/``(C,h,w)``/``(1,C,h,w)`` in [0,1]. ``mask``: ``(h,w)`` weights
    in [0,1] (path or tensor); by default the file's alpha channel, else all ones. ``alpha``: overall opacity
    (1 pastes, < 1 blends). ``size``: optional ``(h, w)`` in pixels to resize the picture to. ``position`` and
    ``margin`` as for ``patch``. A picture larger than the input raises a DataError.
    """

    name = "image"

    def __init__(self, image: ImageLike, mask: ImageLike | None = None, position: Position = "bottom_right",
                 alpha: float = 1.0, size: int | Sequence[int] | None = None, margin: int = 0):
        super().__init__()
        pattern, weights = as_pattern(image, "trigger image")
        self.source = _source_name(image)
        if mask is not None:
            weights, _ = as_pattern(mask, "trigger mask")
            if weights.shape[1] != 1:
                raise DataError(f"trigger mask has {weights.shape[1]} channels; give a single-channel (h,w) mask")
        if weights is None:
            weights = torch.ones_like(pattern[:, :1])
        if weights.shape[-2:] != pattern.shape[-2:]:
            raise DataError(f"trigger mask is {tuple(weights.shape[-2:])} but the image is "
                            f"{tuple(pattern.shape[-2:])}; they must have the same height and width")
        if size is not None:
            box = parse_size(size)
            if not all(isinstance(s, int) for s in box):
                raise ConfigError(f"size of an image trigger must be pixels (ints), got {size!r}")
            pattern, weights = resize(pattern, box), resize(weights, box)
        self.register_buffer("pattern", pattern, persistent=False)
        self.register_buffer("weights", weights, persistent=False)
        self.position = parse_position(position)
        self.alpha = check_fraction(alpha, "alpha", low_open=True)
        self.margin = check_margin(margin)

    def _padded(self, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pattern ``(1,c,H,W)`` and weights ``(1,1,H,W)`` placed on a canvas of the input's size."""
        h, w = image_size(shape)
        box = tuple(self.pattern.shape[-2:])
        top, left = place_box(self.position, box, (h, w), self.margin, "trigger image")
        pad = (left, w - left - box[1], top, h - top - box[0])
        return F.pad(self.pattern, pad), F.pad(self.weights * self.alpha, pad)

    def mask(self, shape: Sequence[int]) -> torch.Tensor:
        return self._padded(shape)[1] > 0

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        pattern, weights = self._padded(x.shape)
        pattern = match_channels(pattern, x.shape[1], "trigger image").to(x)
        weights = weights.to(x)
        return x * (1 - weights) + pattern * weights

    def describe(self) -> str:
        h, w = self.pattern.shape[-2:]
        return f"{self.name}: {h}x{w} picture from {self.source}, opacity {self.alpha}, at {self.position}"
