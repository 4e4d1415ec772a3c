"""The audit report's figures, returned as base64 PNG so the HTML is one self-contained file.

Every label goes through :func:`~xaisec.figure_text.literal_text`: class names and layer names come from the
user's data and model, and a ``$`` in them must not switch matplotlib to mathtext.
"""
from __future__ import annotations

import base64
import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..figure_text import literal_text, literal_texts  # noqa: E402
from ..report.figures import to_display  # noqa: E402


def to_png(fig) -> str:
    """Render and close a matplotlib figure; base64 PNG text."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def triggers_figure(masks: torch.Tensor, patterns: torch.Tensor, norms: Sequence[float], index: Sequence[float],
                    classes: Sequence[int], class_names: Sequence[str], flagged: Sequence[int]) -> str:
    """Reverse-engineered triggers (Neural Cleanse): per class the mask and mask x pattern, with L1 and index."""
    n = len(classes)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n + 0.4, 2.9), squeeze=False)
    for j, k in enumerate(classes):
        axes[0, j].imshow(masks[k, 0].numpy(), cmap="magma", vmin=0, vmax=1)
        axes[1, j].imshow(to_display(masks[k] * patterns[k]), cmap="gray", vmin=0, vmax=1)
        color = "crimson" if k in flagged else "black"
        axes[0, j].set_title(f"{literal_text(class_names[k])}\nL1 {norms[k]:.0f}, idx {index[k]:.1f}", fontsize=7, color=color)
    axes[0, 0].set_ylabel("mask", fontsize=8)
    axes[1, 0].set_ylabel("mask x pattern", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return to_png(fig)


def norms_figure(norms: Sequence[float], class_names: Sequence[str], flagged: Sequence[int], threshold: float) -> str:
    """Bar chart of trigger L1 norms with the median and the median - threshold x 1.4826 MAD line."""
    v = np.asarray(norms, dtype=float)
    med = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - med)))
    fig, ax = plt.subplots(figsize=(max(3.5, 0.35 * len(v) + 1), 2.6))
    ax.bar(range(len(v)), v, color=["crimson" if i in flagged else "steelblue" for i in range(len(v))])
    ax.axhline(med, color="gray", lw=1, label="median")
    if mad > 0:
        ax.axhline(med - threshold * mad, color="crimson", lw=1, ls="--", label=f"anomaly index {threshold:g}")
    ax.set_xticks(range(len(v)))
    ax.set_xticklabels(literal_texts(class_names[: len(v)]), fontsize=7, rotation=90 if len(v) > 12 else 0)
    ax.set_ylabel("trigger mask L1")
    ax.legend(fontsize=7)
    return to_png(fig)


def curves_figure(x: Sequence[float], curves: dict[str, Sequence[float]], xlabel: str, ylabel: str,
                  title: str | None = None) -> str:
    """Line plot of several curves over one x axis (fine-pruning: accuracy and attack success vs pruned fraction)."""
    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    for name, y in curves.items():
        ax.plot(x, y, marker="o", ms=3, label=literal_text(name))
    ax.set_xlabel(literal_text(xlabel))
    ax.set_ylabel(literal_text(ylabel))
    ax.set_ylim(-0.02, 1.02)
    if title:
        ax.set_title(literal_text(title), fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return to_png(fig)


def histograms_figure(groups: dict[str, dict[str, np.ndarray]], threshold: dict[str, float] | None = None) -> str:
    """One panel per score; in each, overlaid histograms of the groups (clean, suspects, ...)."""
    names = list(groups)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        data = {g: np.asarray(v, dtype=float) for g, v in groups[name].items() if len(v)}
        values = np.concatenate(list(data.values()))
        bins = np.linspace(values.min(), values.max() + 1e-9, 30)
        for g, v in data.items():
            ax.hist(v, bins=bins, alpha=0.55, density=True, label=literal_text(g))
        if threshold and name in threshold:
            ax.axvline(threshold[name], color="crimson", ls="--", lw=1, label="threshold")
        ax.set_title(literal_text(name), fontsize=9)
        ax.legend(fontsize=7)
    return to_png(fig)


def scatter_figure(points: dict[str, np.ndarray], title: str) -> str:
    """2-D scatter of groups of points (activation clusters projected on two components)."""
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    for g, p in points.items():
        if len(p):
            ax.scatter(p[:, 0], p[:, 1], s=6, alpha=0.6, label=literal_text(g))
    ax.set_title(literal_text(title), fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7)
    return to_png(fig)


def bars_figure(values: dict[str, float], ylabel: str, threshold: float | None = None) -> str:
    """A bar per named value (Re-BN: statistics shift per BatchNorm layer)."""
    fig, ax = plt.subplots(figsize=(max(3.5, 0.4 * len(values) + 1.5), 2.6))
    ax.bar(range(len(values)), list(values.values()), color="steelblue")
    if threshold is not None:
        ax.axhline(threshold, color="crimson", ls="--", lw=1, label="threshold")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(literal_texts(values), fontsize=7, rotation=60, ha="right")
    ax.set_ylabel(literal_text(ylabel))
    return to_png(fig)
