"""ADV2's metrics (Zhang et al. 2020, Sec. 5): attack success, target-class confidence, map distances and top-k IoU.

Maps are compared after one post-processing (:class:`~xaisec.maps.MapPostprocess`, min-max per map), with
L1/(H*W) and L2/sqrt(H*W) distances (the reference code's conventions) and the IoU of the top-k pixels for a
sweep of k (the paper's Figure 6). Every function returns plain floats for ``metrics.json``.

:func:`adv2_l1`, :func:`adv2_l2` and :func:`adv2_iou` are those definitions as pure per-pair functions on raw maps
(min-max per map first, as the released code): ``map_metrics`` with ``MapPostprocess(norm="minmax")`` gives their
means. The paper's IoU keeps each map's top-k pixels (the non-zero dimensions O(m) of the thresholded map) and
compares the two sets; ties at the k-th value are broken by position.
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


def adv2_l1(maps: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``(B,)``: sum |a - b| / (H*W) of the min-max scaled maps (ADV2's L1 measure, in [0,1])."""
    post = MapPostprocess()
    return distance(post(maps), post(reference), "l1")


def adv2_l2(maps: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``(B,)``: sqrt(sum (a - b)^2) / sqrt(H*W) of the min-max scaled maps (ADV2's L2 measure, in [0,1])."""
    post = MapPostprocess()
    return distance(post(maps), post(reference), "l2")


def adv2_iou(maps: torch.Tensor, reference: torch.Tensor, k: float | int) -> torch.Tensor:
    """``(B,)``: |O(a) ∩ O(b)| / |O(a) ∪ O(b)| with O the top-``k`` pixels of a map (``k`` < 1: a fraction)."""
    return topk_iou(maps, reference, k)


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
