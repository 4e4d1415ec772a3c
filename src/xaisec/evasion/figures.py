"""The adv2 experiment's plots: L1 per interpreter (the paper's Figure 5) and top-k IoU curves (Figure 6).
Image and map grids (Figure 4) use the shared :func:`xaisec.report.panels.map_grid`."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..report.figures import save_figure  # noqa: E402


def iou_figure(curves: Mapping[str, Mapping[str, Mapping[float, float]]], path: str | Path, title: str) -> Path:
    """Figure 6: IoU vs top-k fraction; ``curves`` {interpreter: {attack: {k: iou}}}, one panel per interpreter."""
    names = list(curves)
    fig, axes = plt.subplots(1, len(names), figsize=(2.4 * len(names), 2.3), squeeze=False)
    for ax, name in zip(axes[0], names):
        for attack, points in curves[name].items():
            ks = sorted(points)
            ax.plot(ks, [points[k] for k in ks], marker="o", ms=3, label=attack)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("top-k fraction", fontsize=7)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
    axes[0, 0].set_ylabel("IoU", fontsize=7)
    axes[0, -1].legend(fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def l1_figure(bars: Mapping[str, Mapping[str, float]], path: str | Path, title: str) -> Path:
    """Figure 5: mean L1 distance per interpreter for each attack; ``bars`` {attack: {interpreter: l1}}."""
    attacks = list(bars)
    names = list(next(iter(bars.values())))
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 1.5, 2.4))
    width = 0.8 / len(attacks)
    for a, attack in enumerate(attacks):
        ax.bar([i + a * width for i in range(len(names))], [bars[attack][n] for n in names], width, label=attack)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
    ax.set_xticklabels(names, fontsize=7)
    ax.set_ylabel("L1 / (H*W)", fontsize=7)
    ax.legend(fontsize=6)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(path))
