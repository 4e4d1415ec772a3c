"""Explanation-consistency checks: the detector the classical backdoor defenses do not have.

An explanation backdoor changes *maps*, not predictions, so prediction-based defenses miss it. Honest
explanations of one input are, however, consistent in ways a trigger-driven manipulation tends to break:

* **interpreter disagreement**: Grad-CAM, SimpleGrad and VisualBackProp of the same input roughly agree on
  where the evidence is; a backdoor aimed at one (or a few) of them pulls it away from the others
  (ADV²'s "interpreter ensembles" defense, Zhang et al. 2020);
* **instability under small trigger-agnostic transformations** (noise, blur, JPEG-like quantisation, small
  shifts): an honest map moves a little; a map steered by a trigger flips when the transformation weakens it;
* **discrepancy to a trusted reference model** (when the user has one): maps of the suspect model against
  maps of a model they trust, on the same input and class.

Each check gives a per-input score ``(B,)`` (higher = more suspicious). :class:`ExplanationConsistency` runs
them with one shared explainer pass per batch (the input and all its transformed copies together), is
calibrated on clean data (robust z-scores, threshold at a false-positive rate) and reports AUROC of
triggered against clean inputs.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..explainers import explain_all
from ..maps import MapPostprocess, topk_iou
from ..train import eval_mode
from ..validation import check_images, check_int, check_number
from .transforms import Transform, build_transform
from .registry import DEFENSES

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("gradcam", "simplegrad", "vbp")
DEFAULT_TRANSFORMS = ("noise", "blur", "jpeg", "shift")
AGREEMENTS = ("spearman", "iou")


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks ``1..N`` along the last dimension of ``(B,N)`` values, ties sharing their average rank
    (as ``scipy.stats.rankdata``), batched."""
    b, n = values.shape
    sorted_v, order = values.sort(dim=1, stable=True)
    starts = torch.ones_like(sorted_v, dtype=torch.bool)
    starts[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    group = starts.long().cumsum(1) - 1  # tie-group id of each sorted position
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=values.device).expand(b, n)
    sums = torch.zeros(b, n, dtype=torch.float64, device=values.device).scatter_add_(1, group, pos)
    counts = torch.zeros(b, n, dtype=torch.float64, device=values.device).scatter_add_(1, group, torch.ones_like(pos))
    ranks_sorted = (sums / counts.clamp(min=1)).gather(1, group)
    return torch.empty_like(ranks_sorted).scatter_(1, order, ranks_sorted)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation ``(B,)`` in [-1,1] between paired maps (tie-aware; a constant map gives 0)."""
    ra, rb = average_ranks(a.flatten(1).double()), average_ranks(b.flatten(1).double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denom = (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt()
    return torch.where(denom > 0, (ra * rb).sum(1) / denom.clamp(min=1e-30), torch.zeros_like(denom)).float()


def map_agreement(a: torch.Tensor, b: torch.Tensor, how: str = "spearman", k: float = 0.2) -> torch.Tensor:
    """Agreement ``(B,)`` of paired maps: ``spearman`` rank correlation in [-1,1], or ``iou`` of the top-``k``
    fraction of pixels in [0,1] (ADV²'s IoU test). 1 = identical ranking."""
    if a.shape != b.shape:
        raise DataError(f"maps to compare have different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if how == "spearman":
        return spearman(a, b)
    if how == "iou":
        return topk_iou(a, b, k)
    raise ConfigError(f"unknown map agreement {how!r}; use one of {AGREEMENTS}")


def auroc(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of scores (higher = positive), by the Mann-Whitney U statistic with ties
    counted half. 1 = every positive scores above every negative, 0.5 = chance."""
    neg, pos = torch.as_tensor(negatives).flatten().double(), torch.as_tensor(positives).flatten().double()
    if len(neg) == 0 or len(pos) == 0:
        raise DataError("AUROC needs at least one clean and one triggered score")
    ranks = average_ranks(torch.cat([neg, pos])[None])[0]
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def _pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(methods, 2))


@dataclass
class Calibration:
    """Clean-data statistics of each component: robust centre (median) and scale (1.4826 x MAD)."""

    center: dict[str, float]
    scale: dict[str, float]
    threshold: float
    fpr: float
    clean_scores: torch.Tensor


@DEFENSES.register("explanation_consistency")
class ExplanationConsistency:
    """Interpreter disagreement, perturbation instability and (optional) reference discrepancy.

    ``methods``: explainers compared (one shared pass); ``transforms``: names of
    :func:`~xaisec.defenses.transforms.build_transform` or :class:`Transform` objects; ``reference``: a trusted
    model of the same task; ``agreement``: ``spearman`` or ``iou`` (top-``k``); maps are average-pooled to about
    ``grid`` x ``grid`` cells and min-max scaled before comparison (explicit, as every paper normalises
    differently). Explanations use the class the suspect model predicts for the untransformed input.
    ``two_sided``: also count unusually *consistent* maps as suspicious (|robust z|): a trigger that dominates every
    interpreter (a BadNets patch) makes maps agree more than clean ones do.
    """

    def __init__(self, model: nn.Module, methods: Sequence[str] = DEFAULT_METHODS,
                 transforms: Sequence[str | Transform] = DEFAULT_TRANSFORMS, reference: nn.Module | None = None,
                 agreement: str = "spearman", k: float = 0.2, grid: int = 8, two_sided: bool = False,
                 batch_size: int = 128, seed: int = 0):
        if agreement not in AGREEMENTS:
            raise ConfigError(f"unknown map agreement {agreement!r}; use one of {AGREEMENTS}")
        if not methods:
            raise ConfigError("explanation consistency needs at least one explainer")
        k = check_number(k, "k", low=0, high=1, low_open=True)
        grid, batch_size = check_int(grid, "grid", low=1), check_int(batch_size, "batch_size", low=1)
        seed = check_int(seed, "seed", low=0)
        self.model, self.reference = model, reference
        self.explainers = list(methods)
        self.methods = [m if isinstance(m, str) else m.name for m in methods]
        self.transforms = [t if isinstance(t, Transform) else build_transform(t) for t in transforms]
        self.agreement, self.k, self.grid, self.batch_size, self.seed = agreement, k, grid, batch_size, seed
        self.two_sided = two_sided
        self.calibration: Calibration | None = None

    @property
    def component_names(self) -> list[str]:
        names = []
        if len(self.methods) > 1:
            names.append("disagreement")
        if self.transforms:
            names.append("instability")
        if self.reference is not None:
            names.append("reference")
        return names

    def _post(self, maps: torch.Tensor) -> torch.Tensor:
        pool = max(1, round(maps.shape[-1] / self.grid))
        return MapPostprocess(relu=False, pool=pool, norm="minmax")(maps)

    def _gap(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 1 - map_agreement(a, b, self.agreement, self.k)

    def details(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every elementary score ``(B,)``: ``disagreement/<m1>-<m2>``, ``instability/<transform>/<method>``,
        ``reference/<method>``, plus the component means ``disagreement``, ``instability``, ``reference``."""
        check_images(x, "images")
        gen = torch.Generator().manual_seed(self.seed)
        parts: dict[str, list[torch.Tensor]] = {}
        for xb in x.split(self.batch_size):
            for key, v in self._batch_details(xb, gen).items():
                parts.setdefault(key, []).append(v)
        return {key: torch.cat(v) for key, v in parts.items()}

    def _batch_details(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        b = len(x)
        with eval_mode(self.model):
            with torch.no_grad():
                target = self.model(x).argmax(1)
            batch = torch.cat([x] + [t.apply(x, gen) for t in self.transforms])
            joint = explain_all(self.model, batch, target.repeat(1 + len(self.transforms)), self.explainers)
        maps = {m: v.view(1 + len(self.transforms), b, *v.shape[1:]) for m, v in joint.maps.items()}
        out: dict[str, torch.Tensor] = {}
        if len(self.methods) > 1:
            post = {m: self._post(maps[m][0]) for m in self.methods}
            pair = {f"disagreement/{m1}-{m2}": self._gap(post[m1], post[m2]) for m1, m2 in _pairs(self.methods)}
            out.update(pair)
            out["disagreement"] = torch.stack(list(pair.values())).mean(0)
        if self.transforms:
            inst = {}
            for i, t in enumerate(self.transforms, start=1):
                for m in self.methods:
                    inst[f"instability/{t.name}/{m}"] = self._gap(self._post(maps[m][0]), self._post(t.align(maps[m][i])))
            out.update(inst)
            out["instability"] = torch.stack(list(inst.values())).mean(0)
        if self.reference is not None:
            with eval_mode(self.reference):
                ref = explain_all(self.reference, x, target, self.methods).maps  # names: built for the reference
            refs = {f"reference/{m}": self._gap(self._post(maps[m][0]), self._post(ref[m])) for m in self.methods}
            out.update(refs)
            out["reference"] = torch.stack(list(refs.values())).mean(0)
        return out

    def components(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The component scores ``{name: (B,)}`` (raw, before calibration)."""
        d = self.details(x)
        return {n: d[n] for n in self.component_names}

    def fit(self, x_clean: torch.Tensor, fpr: float = 0.05) -> "ExplanationConsistency":
        """Calibrate on clean images: per component median and 1.4826 MAD; the combined score's threshold is
        its ``1 - fpr`` quantile on ``x_clean`` (so about ``fpr`` of clean inputs are flagged)."""
        if not 0 < fpr < 1:
            raise ConfigError(f"false-positive rate must be in (0, 1), got {fpr}")
        comps = self.components(x_clean)
        center = {n: float(v.median()) for n, v in comps.items()}
        scale = {n: max(1.4826 * float((v - center[n]).abs().median()), 1e-6) for n, v in comps.items()}
        self.calibration = Calibration(center, scale, 0.0, fpr, torch.empty(0))
        clean = self.combine(comps)
        self.calibration.threshold = float(torch.quantile(clean, 1 - fpr))
        self.calibration.clean_scores = clean
        return self

    def combine(self, scores: dict[str, torch.Tensor], components: Sequence[str] | None = None,
                two_sided: bool | None = None) -> torch.Tensor:
        """The combined score ``(B,)`` of already computed component ``scores`` (from :meth:`details`): the largest
        calibrated robust z-score (|z| if ``two_sided``; default: the detector's setting) over ``components``
        (default: all of :attr:`component_names`)."""
        if self.calibration is None:
            raise ConfigError("call fit(x_clean) before combining scores; they are calibrated on clean data")
        cal = self.calibration
        names = self.component_names if components is None else list(components)
        unknown = [n for n in names if n not in cal.center]
        if unknown or not names:
            raise ConfigError(f"components must be a non-empty subset of {self.component_names}, got {names}")
        z = torch.stack([(scores[n] - cal.center[n]) / cal.scale[n] for n in names])
        two_sided = self.two_sided if two_sided is None else two_sided
        return (z.abs() if two_sided else z).amax(0)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Combined score ``(B,)``: the largest robust z-score (or |z| if ``two_sided``) over the components
        (higher = more suspicious)."""
        if self.calibration is None:
            raise ConfigError("call fit(x_clean) before score(); the scores are calibrated on clean data")
        return self.combine(self.components(x))

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean ``(B,)``: score above the clean-calibrated threshold."""
        scores = self.score(x)  # raises if not fitted
        return scores > self.calibration.threshold

    def evaluate(self, x_clean: torch.Tensor, x_triggered: torch.Tensor) -> dict[str, float]:
        """AUROC (triggered vs clean) of every elementary score, of each component and of the combined score;
        plus the detection rate at the calibrated threshold. Fit on *other* clean data first."""
        if self.calibration is None:
            raise ConfigError("call fit(x_clean) on held-out clean data before evaluate()")
        clean, trig = self.details(x_clean), self.details(x_triggered)
        out = {f"auroc/{n}": auroc(clean[n], trig[n]) for n in clean}
        s_clean, s_trig = self.combine(clean), self.combine(trig)
        out["auroc/combined"] = auroc(s_clean, s_trig)
        out["detection_rate"] = float((s_trig > self.calibration.threshold).float().mean())
        out["false_positive_rate"] = float((s_clean > self.calibration.threshold).float().mean())
        return out
