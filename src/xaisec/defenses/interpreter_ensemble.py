"""Interpreter ensemble detector (Zhang et al. 2020, https://arxiv.org/abs/1812.00891, Sec. 8, defense 1).

Several interpreters explain the predicted class of an input; an input is flagged when their maps disagree more
than on benign inputs. Score = mean over pairs of interpreters of the distance between their post-processed
maps (``l1``: L1/(H*W) after min-max; ``iou``: 1 - IoU of the top-``k`` pixels); the threshold is the (1 - fpr)
quantile of benign scores. An ADV2 input aimed at one interpreter leaves the others telling another story; one
aimed at all of them at once (a weighted sum of their losses) is the adaptive answer.
"""
from __future__ import annotations

from itertools import combinations
from typing import Mapping

import torch
from torch import nn

from ..errors import ConfigError, XaisecError
from ..explainers import Explainer
from ..maps import MapPostprocess, distance, topk_iou
from ..models import model_device
from ..train import eval_mode
from ..validation import check_images, check_int, check_number
from .registry import DEFENSES


@DEFENSES.register("interpreter_ensemble")
class InterpreterEnsembleDetector:
    """``explainers``: {name: Explainer} (at least two) of the same ``model``; ``post``: one map post-processing
    for all or one per member (maps must end up on comparable [0,1] scales); higher score = more suspicious."""

    def __init__(self, model: nn.Module, explainers: Mapping[str, Explainer],
                 post: MapPostprocess | Mapping[str, MapPostprocess] = MapPostprocess(),
                 metric: str = "l1", k: float = 0.2, fpr: float = 0.05, batch_size: int = 100):
        if len(explainers) < 2:
            raise ConfigError(f"an interpreter ensemble needs at least two interpreters, got {list(explainers)}")
        if metric not in ("l1", "iou"):
            raise ConfigError(f"unknown disagreement metric {metric!r}; use 'l1' or 'iou'")
        fpr = check_number(fpr, "fpr", low=0, high=1, low_open=True, high_open=True)
        k = check_number(k, "k (top-k pixels: a fraction < 1 or a count)", low=0, low_open=True)
        batch_size = check_int(batch_size, "batch_size", low=1)
        posts = post if isinstance(post, Mapping) else {n: post for n in explainers}
        missing = [n for n in explainers if n not in posts]
        if missing:
            raise ConfigError(f"no map post-processing given for ensemble members {missing}")
        self.model, self.explainers, self.posts = model, dict(explainers), dict(posts)
        self.metric, self.k, self.fpr, self.batch_size = metric, k, fpr, batch_size
        self.threshold: float | None = None

    def maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Post-processed maps of every member for the predicted class of ``x``."""
        check_images(x)
        out: dict[str, list[torch.Tensor]] = {n: [] for n in self.explainers}
        device = model_device(self.model)
        with eval_mode(self.model):
            for xb in x.split(self.batch_size):
                xb = xb.to(device)
                with torch.no_grad():
                    pred = self.model(xb).argmax(1)
                for name, e in self.explainers.items():
                    out[name].append(self.posts[name](e(xb, pred).maps).to(x.device))
        return {n: torch.cat(v) for n, v in out.items()}

    def disagreement(self, maps: Mapping[str, torch.Tensor]) -> torch.Tensor:
        pairs = list(combinations(maps, 2))
        if self.metric == "l1":
            d = [distance(maps[a], maps[b], "l1") for a, b in pairs]
        else:
            d = [1 - topk_iou(maps[a], maps[b], self.k) for a, b in pairs]
        return torch.stack(d, 1).mean(1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Mean pairwise disagreement (B,)."""
        return self.disagreement(self.maps(x))

    def fit(self, x_benign: torch.Tensor) -> "InterpreterEnsembleDetector":
        """Threshold = (1 - fpr) quantile of the benign scores."""
        self.threshold = float(torch.quantile(self.score(x_benign).double(), 1 - self.fpr))
        return self

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """Bool (B,): disagreement above the fitted threshold."""
        if self.threshold is None:
            raise XaisecError("InterpreterEnsembleDetector is not fitted: call fit(x_benign) first")
        return self.score(x) > self.threshold
