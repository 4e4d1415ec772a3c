"""Figures a person reads at a glance: images with their explanation maps overlaid."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..figure_text import literal_text  # noqa: E402

from ..maps import normalize  # noqa: E402


def to_display(img: torch.Tensor):
    """(C,H,W) in [0,1] -> array for imshow (H,W) gray or (H,W,3)."""
    img = img.detach().cpu().float().clamp(0, 1)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def explanation_grid(images: torch.Tensor, maps: dict[str, torch.Tensor], path: str | Path,
                     row_labels: Sequence[str] | None = None, title: str | None = None, alpha: float = 0.55) -> Path:
    """Save a grid: one row per image, the image then each method's min-max-scaled map overlaid (jet).

    ``images`` (N,C,H,W) in [0,1]; ``maps`` {method: (N,1,H,W)}.
    """
    n, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n), squeeze=False)
    shown = {name: normalize(m.detach().float().cpu()) for name, m in maps.items()}
    for i in range(n):
        base = to_display(images[i])
        axes[i, 0].imshow(base, cmap="gray", vmin=0, vmax=1)
        if row_labels is not None:
            axes[i, 0].set_ylabel(literal_text(row_labels[i]), fontsize=7)
        for j, (name, m) in enumerate(shown.items(), start=1):
            axes[i, j].imshow(base, cmap="gray", vmin=0, vmax=1)
            axes[i, j].imshow(m[i, 0].numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1)
            if i == 0:
                axes[i, j].set_title(literal_text(name), fontsize=8)
        if i == 0:
            axes[i, 0].set_title(literal_text("input"), fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(literal_text(title), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG atomically (temporary file + rename) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path
