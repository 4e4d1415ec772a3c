"""Feature attributions of the tabular backdoor as grouped bars: reference model, attacked model on clean inputs,
attacked model on triggered inputs (Fang & Choromanska, AAAI 2022, Fig. 1b)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..errors import DataError  # noqa: E402
from ..report.figures import save_figure  # noqa: E402

GROUPS = {"reference_clean": "reference model, clean", "clean": "attacked model, clean",
          "triggered": "attacked model, triggered"}


def attribution_bars(attributions: dict[str, torch.Tensor], feature_names: Sequence[str], path: str | Path,
                     title: str = "", highlight: Sequence[int] = ()) -> Path:
    """Bars of the mean attribution per feature ``(F,)`` for each group of ``attributions`` (keys of
    :data:`GROUPS`, e.g. one explainer's entry of :class:`~xaisec.backdoor.tabular.TabularResult`), written to
    ``path`` as PNG. ``highlight``: feature columns to mark (the trigger's or the target features)."""
    groups = [g for g in GROUPS if g in attributions]
    if not groups:
        raise DataError(f"no attribution group to plot; expected some of {list(GROUPS)}, got {list(attributions)}")
    values = np.stack([attributions[g].detach().cpu().float().numpy() for g in groups])
    if values.shape[1] != len(feature_names):
        raise DataError(f"{values.shape[1]} attributions per group but {len(feature_names)} feature names")
    n = values.shape[1]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * n + 2), 3.6))
    width = 0.8 / len(groups)
    for i, g in enumerate(groups):
        ax.bar(np.arange(n) + (i - (len(groups) - 1) / 2) * width, values[i], width, label=GROUPS[g])
    ax.set_xticks(np.arange(n))
    ax.set_xticklabels(feature_names, rotation=90, fontsize=7)
    for label in (ax.get_xticklabels()[i] for i in highlight if 0 <= i < n):
        label.set_color("tab:red")
        label.set_fontweight("bold")
    ax.set_ylabel("mean attribution\n(min-max per sample)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
