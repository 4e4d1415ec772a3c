"""Target maps for ADV2 (Zhang et al. 2020, Sec. 5 and 7) and the target classes they go with.

- ``benign``: the benign map of the same image (the disguise: the explanation looks unchanged);
- ``class``: the map of a random correctly classified image of the target class (the reference code's main setting);
- ``patch``: a random square patch (Table 6's "random patch interpretations").
All maps are (B,1,H,W) at input resolution; the attack post-processes them like its own maps.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError, DataError

TARGET_KINDS = ("benign", "class", "patch")


def random_target_classes(y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random class different from ``y`` (B,) for every image."""
    if num_classes < 2:
        raise DataError("a targeted attack needs at least two classes")
    shift = torch.randint(1, num_classes, y.shape, generator=generator)
    return (y.cpu() + shift).remainder(num_classes).to(y.device)


def pick_class_examples(y_target: torch.Tensor, pool_labels: torch.Tensor, pool_correct: torch.Tensor,
                        generator: torch.Generator) -> torch.Tensor:
    """For each target class, the index of a random pool image of that class that the model classifies correctly."""
    out = torch.empty_like(y_target)
    for c in y_target.unique().tolist():  # loop over classes (few), not over images
        candidates = torch.nonzero((pool_labels == c) & pool_correct).flatten()
        if len(candidates) == 0:
            raise DataError(f"no correctly classified image of class {c} in the pool to take a target map from")
        where = y_target == c
        out[where] = candidates[torch.randint(len(candidates), (int(where.sum()),), generator=generator)].to(out)
    return out


def patch_maps(n: int, size: tuple[int, int], fraction: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` maps (n,1,H,W) that are 1 on a random square covering ``fraction`` of the image and 0 elsewhere."""
    if not 0 < fraction < 1:
        raise ConfigError(f"patch fraction must be in (0, 1), got {fraction}")
    h, w = size
    side = max(1, int(round((fraction * h * w) ** 0.5)))
    side_h, side_w = min(side, h), min(side, w)
    top = torch.randint(0, h - side_h + 1, (n,), generator=generator)
    left = torch.randint(0, w - side_w + 1, (n,), generator=generator)
    rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + side_h)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + side_w)[:, None, None]))
    return inside.float()[:, None]
