"""ADV2's metrics (Zhang et al. 2020, Sec. 5): attack success, target-class confidence, map distances and top-k IoU.

Maps are compared after one post-processing (:class:`~xaisec.maps.MapPostprocess`, min-max per map), with
L1/(H*W) and L2/sqrt(H*W) distances (the reference code's conventions) and the IoU of the top-k pixels for a
sweep of k (the paper's Figure 6). Every function returns plain floats for ``metrics.json``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..maps import MapPostprocess, distance, topk_iou


def success(logits: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the classifier outputs the target class."""
    return logits.argmax(1) == y_target


def prediction_metrics(logits: torch.Tensor, y_target: torch.Tensor) -> dict[str, float]:
    """``asr`` (fraction classified as the target) and ``confidence`` (mean softmax of the target class)."""
    conf = F.softmax(logits.detach().float(), 1).gather(1, y_target[:, None])[:, 0]
    return {"asr": success(logits, y_target).float().mean().item(), "confidence": conf.mean().item()}


def map_metrics(maps: torch.Tensor, reference: torch.Tensor, post: MapPostprocess,
                ks: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5)) -> dict[str, float]:
    """Mean ``l1``, ``l2`` and ``iou@k`` (for each top-k fraction in ``ks``) between two batches of raw maps."""
    a, b = post(maps.detach().float()), post(reference.detach().float())
    out = {"l1": distance(a, b, "l1").mean().item(), "l2": distance(a, b, "l2").mean().item()}
    for k in ks:
        out[f"iou@{k:g}"] = topk_iou(a, b, float(k)).mean().item()
    return out


def perturbation_metrics(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, float]:
    """Size of the perturbation: max and mean L-inf, mean L2 per image (pixels in [0,1])."""
    d = (x_adv - x).flatten(1)
    linf = d.abs().amax(1)
    return {"linf_max": linf.max().item(), "linf_mean": linf.mean().item(), "l2_mean": d.norm(dim=1).mean().item()}
