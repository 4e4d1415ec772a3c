"""Figures of the adv2 experiment: benign / plain / ADV2 inputs and maps side by side (the paper's Figure 4),
L1 per interpreter (Figure 5) and top-k IoU curves (Figure 6)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..maps import normalize  # noqa: E402
from ..report.figures import save_figure, to_display  # noqa: E402


def comparison_figure(images: Mapping[str, torch.Tensor], maps: Mapping[str, torch.Tensor], path: str | Path,
                      row_labels: Sequence[str] = (), title: str = "", minmax: bool = True) -> Path:
    """One row per image: for each column (e.g. benign / PGD / ADV2) the input and its map, then extra maps
    (e.g. the target). ``images`` {column: (N,C,H,W)}; ``maps`` {column: (N,1,H,W)} (columns without an image
    show the map alone). Maps are min-max scaled per map, or shown as they are on [0,1] (``minmax=False``)."""
    columns = list(dict.fromkeys([*images, *maps]))
    n = len(next(iter(maps.values())))
    layout = []
    for c in columns:
        if c in images:
            layout.append((c, "image"))
        if c in maps:
            layout.append((c, "map"))
    fig, axes = plt.subplots(n, len(layout), figsize=(1.35 * len(layout), 1.35 * n + 0.4), squeeze=False)
    shown = {c: (normalize(m.detach().float().cpu()) if minmax else m.detach().float().cpu()) for c, m in maps.items()}
    for i in range(n):
        for j, (c, kind) in enumerate(layout):
            ax = axes[i, j]
            if kind == "image":
                ax.imshow(to_display(images[c][i]), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(shown[c][i, 0].numpy(), cmap="jet", vmin=0, vmax=1)
            if i == 0:
                ax.set_title(f"{c}" if kind == "image" else f"{c} map", fontsize=7)
            if j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(path))


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
