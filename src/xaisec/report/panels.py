"""Report figures: image rows, map-comparison grids and training curves (matplotlib, PNG, written atomically)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..figure_text import literal_text  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ..maps import normalize  # noqa: E402
from .figures import save_figure, to_display  # noqa: E402


def _clear(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def image_rows(rows: Sequence[tuple[str, torch.Tensor]], path: str | Path, col_labels: Sequence[str] | None = None,
               title: str | None = None) -> Path:
    """One row per ``(label, images (N,C,H,W) in [0,1])``, e.g. clean / triggered / trigger region."""
    n = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.25 * n + 0.6, 1.3 * len(rows) + 0.4), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            _clear(ax)
            if c < len(images):
                ax.imshow(to_display(images[c]), cmap="gray", vmin=0, vmax=1)
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(literal_text(label), fontsize=9)
            if r == 0 and col_labels is not None and c < len(col_labels):
                ax.set_title(literal_text(col_labels[c]), fontsize=7)
    if title:
        fig.suptitle(literal_text(title), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _resized(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    maps = normalize(maps.detach().float().cpu(), "minmax")
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=size, mode="nearest")
    return maps


def map_grid(columns: Sequence[tuple[str, torch.Tensor, torch.Tensor | None]], path: str | Path,
             row_labels: Sequence[str] | None = None, title: str | None = None, alpha: float = 0.6) -> Path:
    """Columns of ``(title, images (N,C,H,W), maps (N,1,h,w) or None)``: an image alone, or its map overlaid
    (min-max scaled, jet). Maps of another size (pooled targets) are resized with nearest neighbours."""
    n, cols = len(columns[0][1]), len(columns)
    fig, axes = plt.subplots(n, cols, figsize=(1.3 * cols + 0.8, 1.3 * n + 0.5), squeeze=False)
    for c, (name, images, maps) in enumerate(columns):
        shown = None if maps is None else _resized(maps, tuple(images.shape[-2:]))
        for r in range(n):
            ax = axes[r, c]
            _clear(ax)
            ax.imshow(to_display(images[r]), cmap="gray", vmin=0, vmax=1)
            if shown is not None:
                ax.imshow(shown[r, 0].numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1)
            if r == 0:
                ax.set_title(literal_text(name), fontsize=8)
            if c == 0 and row_labels is not None:
                ax.set_ylabel(literal_text(row_labels[r]), fontsize=9)
    if title:
        fig.suptitle(literal_text(title), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def training_curves(history: Sequence[dict], path: str | Path) -> Path | None:
    """Per-stage loss parts and the monitored quality per epoch; None if there is no history."""
    if not history:
        return None
    stages = list(dict.fromkeys(r["stage"] for r in history))
    fig, axes = plt.subplots(1, len(stages) + 1, figsize=(4.2 * (len(stages) + 1), 3.0), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rows = [r for r in history if r["stage"] == stage]
        epochs = [r["epoch"] for r in rows]
        for key in ("loss", "ce", "bce", "map_keep", "map_goal"):
            if key in rows[0]:
                ax.plot(epochs, [r[key] for r in rows], marker=".", label=key)
        ax.set_yscale("log")
        ax.set_title(literal_text(f"{stage}: training loss"), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.legend(fontsize=7)
    ax = axes[0, -1]
    rows = [r for r in history if any(k.startswith("monitor/") for k in r)]
    if rows:
        epochs = [r["epoch"] for r in rows]
        for key in sorted(k for k in rows[0] if k.startswith("monitor/")):
            ax.plot(epochs, [r.get(key, float("nan")) for r in rows], marker=".", label=key[len("monitor/"):])
        ax.set_title("attack: monitored (ReLU model, training slice)", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.legend(fontsize=6)
    else:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)
