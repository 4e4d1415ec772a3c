"""Multi-label classification (ChestX-ray14's 14 findings): the training objective, AUROC per finding, and
which finding a map explains.

Wang et al. ("ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks", CVPR 2017) train one sigmoid
output per finding with binary cross-entropy and report the area under the ROC curve of each finding; the mean
over findings is the usual single figure. Latka et al.'s single-label setting ("Stealthy Sabotage", 2024)
stays the ordinary classification path (``chestxray14`` with ``single_label=True``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .defenses.explanation_consistency import auroc
from .errors import ConfigError, DataError
from .train import LossOutput


def binary_cross_entropy(model: nn.Module, batch: Sequence[torch.Tensor]) -> LossOutput:
    """Multi-label objective on ``(x, y, ...)`` batches, ``y`` float ``(B,K)`` 0/1: the mean BCE of the ``K``
    sigmoid outputs (lower is better)."""
    x, y = batch[0], batch[1]
    loss = F.binary_cross_entropy_with_logits(model(x), y.to(dtype=torch.float32))
    return LossOutput(loss, {"bce": loss.item()})


#: why no AUROC can be computed
NO_AUROC = "no finding has both positive and negative images, so no AUROC is defined; evaluate on more images"


def defined_findings(targets: torch.Tensor) -> torch.Tensor:
    """Bool ``(K,)``: the findings of 0/1 ``targets`` ``(N,K)`` with both positive and negative images (those with
    an AUROC)."""
    present = torch.as_tensor(targets) > 0.5
    return present.any(0) & (~present).any(0)


def multilabel_auroc(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(per-finding AUROC (K,), mean over findings)`` of scores ``(N,K)`` (logits or probabilities, higher =
    finding present) against 0/1 ``targets`` ``(N,K)``; higher is better, 0.5 = chance. A finding without both
    positive and negative images has no AUROC (NaN) and is left out of the mean."""
    scores, targets = torch.as_tensor(scores), torch.as_tensor(targets)
    if scores.dim() != 2 or scores.shape != targets.shape:
        raise DataError(f"multilabel_auroc needs scores and targets of one shape (N, K), got {tuple(scores.shape)} "
                        f"and {tuple(targets.shape)}")
    present = targets > 0.5
    per_class = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    for k in range(scores.shape[1]):  # K findings (14): one rank statistic each
        pos, neg = scores[present[:, k], k], scores[~present[:, k], k]
        if len(pos) and len(neg):
            per_class[k] = auroc(neg, pos)
    defined = per_class[~per_class.isnan()]
    if not len(defined):
        raise DataError(NO_AUROC)
    return per_class, float(defined.mean())


def resolve_finding(finding: int | str | None, class_names: Sequence[str], num_classes: int | None = None,
                    where: str = "finding") -> int | None:
    """The index of ``finding`` (a name from ``class_names`` or an index below ``num_classes``, default
    ``len(class_names)``), or None (each image's top-scoring finding); ConfigError naming ``where`` otherwise."""
    if finding is None:
        return None
    count = len(class_names) if num_classes is None else num_classes
    if isinstance(finding, str):
        if finding not in class_names:
            raise ConfigError(f"{where} {finding!r} is not one of {list(class_names)}")
        return list(class_names).index(finding)
    if isinstance(finding, bool) or not isinstance(finding, int) or not 0 <= finding < count:
        raise ConfigError(f"{where} must be a finding name or an index in [0, {count - 1}], got {finding!r}")
    return finding


def explained_finding(logits: torch.Tensor, finding: int | str | None = None,
                      class_names: Sequence[str] = ()) -> torch.Tensor:
    """Class indices ``(B,)`` for the explainers' ``target``: ``finding`` (an index or a name from
    ``class_names``) for every image, or each image's top-scoring finding when ``finding`` is None."""
    index = resolve_finding(finding, class_names, logits.shape[1])
    if index is None:
        return logits.argmax(1)
    return torch.full((len(logits),), index, dtype=torch.long, device=logits.device)


def label_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of (image, finding) pairs ``(N,K)`` whose thresholded sigmoid (logit > 0) matches the 0/1 target, in
    [0,1]; always defined (unlike AUROC on a few images), so it serves as the monitored accuracy of training."""
    return ((logits > 0) == (targets > 0.5)).float().mean().item()
