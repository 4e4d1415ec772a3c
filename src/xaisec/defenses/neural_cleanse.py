"""Neural Cleanse (Wang et al., S&P 2019, https://doi.org/10.1109/SP.2019.00031).

For every class ``k`` reverse-engineer the smallest trigger (mask ``m_k`` (1,H,W) and pattern ``p_k`` (C,H,W),
both in [0,1]) that sends clean inputs to ``k``: ``x' = (1 - m_k) * x + m_k * p_k``, minimising
``CE(f(x'), k) + cost_k * |m_k|_1`` with Adam and the paper's cost schedule (cost starts at 0, is set to
``init_cost`` once the attack succeeds, then multiplied up by 1.5 / down by 1.5**1.5 after ``patience`` epochs
above / below the success threshold). A backdoored class needs a much smaller mask than the others: the anomaly
index of a class is its distance to the median L1 norm in units of the median absolute deviation (x 1.4826,
the normal consistency constant); an index above 2 for a class *below* the median flags a backdoor
(Fang & Choromanska, Figure 4a, plot this index).

All classes are optimised jointly as one batch (K classes x B images per step): Adam is element-wise, so the
summed per-class losses are optimised exactly as K separate runs would be.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import numerics
from ..errors import DataError
from ..train import eval_mode
from ..validation import check_images, check_int, check_number, match_model_dtype, model_logits
from .registry import DEFENSES

log = logging.getLogger(__name__)


class PartialAnalysisWarning(UserWarning):
    """A defense analysed only part of what it could (e.g. Neural Cleanse on the first classes only)."""

MAD_CONSISTENCY = 1.4826


def mad_anomaly_index(values: torch.Tensor, consistency: float = MAD_CONSISTENCY) -> torch.Tensor:
    """``|v - median| / (consistency * MAD)`` per entry ``(K,)`` (>= 0). A zero MAD gives 0 where ``v`` equals
    the median and ``inf`` elsewhere. The median is the lower middle value for an even count (torch's)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() < 2:
        raise DataError(f"the anomaly index needs at least 2 values, got {v.numel()}")
    med = v.median()
    dev = (v - med).abs()
    mad = consistency * dev.median()
    if mad == 0:
        return torch.where(dev == 0, torch.zeros_like(dev), torch.full_like(dev, math.inf))
    return dev / mad


def flag_small_outliers(values: torch.Tensor, threshold: float = 2.0) -> list[int]:
    """Indices whose anomaly index exceeds ``threshold`` *and* lie below the median (a backdoor needs a
    smaller trigger, never a larger one)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    idx = mad_anomaly_index(v)
    return [int(i) for i in torch.nonzero((idx > threshold) & (v < v.median())).flatten()]


@dataclass
class NeuralCleanseResult:
    """Reverse-engineered triggers and the outlier test.

    ``masks`` (K,1,H,W) and ``patterns`` (K,C,H,W) in [0,1]; ``l1_norms`` (K,) mask L1 norms (pixels);
    ``attack_success`` (K,) fraction of the clean set the trigger sends to its class; ``anomaly_index`` (K,);
    ``flagged`` classes (index > threshold and below the median); ``model_anomaly_index`` the largest index
    among classes below the median (Fang's Figure 4a value).
    """

    masks: torch.Tensor
    patterns: torch.Tensor
    l1_norms: torch.Tensor
    attack_success: torch.Tensor
    anomaly_index: torch.Tensor
    flagged: list[int]
    model_anomaly_index: float
    threshold: float
    epochs_run: list[int] = field(default_factory=list)
    found: list[bool] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early_by_deadline: bool = False
    #: the model's number of classes; larger than ``len(masks)`` when only the first classes were analysed
    model_classes: int | None = None

    @property
    def partial(self) -> bool:
        """True when only some of the model's classes were analysed (``num_classes`` < the model's classes)."""
        return self.model_classes is not None and self.model_classes > len(self.masks)

    @property
    def suspect_class(self) -> int:
        """The class with the smallest trigger (the one a backdoor would target)."""
        return int(self.l1_norms.argmin())

    def stamp(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Apply class ``k``'s reverse-engineered trigger to images ``x`` (B,C,H,W)."""
        mask, pattern = self.masks[k].to(x.device), self.patterns[k].to(x.device)
        return (1 - mask) * x + mask * pattern

    def to_dict(self) -> dict:
        return {"l1_norms": self.l1_norms.tolist(), "attack_success": self.attack_success.tolist(),
                "anomaly_index": self.anomaly_index.tolist(), "flagged_classes": self.flagged,
                "model_anomaly_index": self.model_anomaly_index, "threshold": self.threshold,
                "suspect_class": self.suspect_class, "epochs_run": self.epochs_run, "trigger_found": self.found,
                "seconds": self.seconds, "stopped_by_deadline": self.stopped_early_by_deadline,
                "classes_analysed": len(self.masks), "model_classes": self.model_classes, "partial": self.partial}


def _to_raw(v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Inverse of ``tanh(raw)/2 + 0.5`` (the box-constraint reparametrisation of the reference code)."""
    return torch.atanh((v - 0.5) * (2 - eps))


def _squash(raw: torch.Tensor) -> torch.Tensor:
    return torch.tanh(raw) / 2 + 0.5


class _CostSchedule:
    """The reference cost schedule and early stopping, vectorised over the K classes (numpy-free, on CPU)."""

    def __init__(self, k: int, init_cost: float, patience: int, multiplier: float, threshold: float,
                 early_stop_patience: int, early_stop_threshold: float = 0.99):
        self.init_cost, self.patience, self.threshold = init_cost, patience, threshold
        self.up_mult, self.down_mult = multiplier, multiplier**1.5
        self.early_stop_patience, self.early_stop_threshold = early_stop_patience, early_stop_threshold
        self.cost = torch.zeros(k, dtype=torch.float64)
        z = lambda: torch.zeros(k, dtype=torch.long)  # noqa: E731
        self.set_counter, self.up_counter, self.down_counter, self.stop_counter = z(), z(), z(), z()
        self.up_flag = torch.zeros(k, dtype=torch.bool)
        self.down_flag = torch.zeros(k, dtype=torch.bool)
        self.best_reg = torch.full((k,), math.inf, dtype=torch.float64)
        self.stop_reg_best = torch.full((k,), math.inf, dtype=torch.float64)
        self.done = torch.zeros(k, dtype=torch.bool)

    def update(self, acc: torch.Tensor, reg: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """One epoch's mean attack success ``acc`` and mask L1 ``reg`` (K,); returns which classes improved."""
        ok = acc >= self.threshold
        improved = active & ok & (reg < self.best_reg)
        self.best_reg = torch.where(improved, reg, self.best_reg)
        # early stopping: only once a valid trigger exists and the cost has moved both ways
        found = self.best_reg < math.inf
        both = self.up_flag & self.down_flag
        stale = self.best_reg >= self.early_stop_threshold * self.stop_reg_best
        self.stop_counter = torch.where(found & both, torch.where(stale, self.stop_counter + 1, 0), self.stop_counter)
        self.stop_reg_best = torch.where(found, torch.minimum(self.best_reg, self.stop_reg_best), self.stop_reg_best)
        self.done |= active & found & both & (self.stop_counter >= self.early_stop_patience)
        # cost: set to init_cost after `patience` successful epochs at cost 0
        at_zero = (self.cost == 0) & ok
        self.set_counter = torch.where(at_zero, self.set_counter + 1, 0)
        start = at_zero & (self.set_counter >= self.patience)
        self.cost = torch.where(start, self.init_cost, self.cost)
        for t in (self.up_counter, self.down_counter):
            t.masked_fill_(start, 0)
        self.up_flag &= ~start
        self.down_flag &= ~start
        # cost: up after `patience` successful epochs, down after `patience` failed ones
        self.up_counter = torch.where(ok, self.up_counter + 1, 0)
        self.down_counter = torch.where(ok, 0, self.down_counter + 1)
        up = self.up_counter >= self.patience
        down = ~up & (self.down_counter >= self.patience)
        self.cost = torch.where(up, self.cost * self.up_mult, torch.where(down, self.cost / self.down_mult, self.cost))
        self.up_counter.masked_fill_(up, 0)
        self.down_counter.masked_fill_(down, 0)
        self.up_flag |= up
        self.down_flag |= down
        return improved


@DEFENSES.register("neural_cleanse")
def neural_cleanse(model: nn.Module, x: torch.Tensor, num_classes: int | None = None, *,
                   epochs: int = 40, batch_size: int = 32, lr: float = 0.1, init_cost: float = 1e-3,
                   success_threshold: float = 0.99, patience: int = 5, cost_multiplier: float = 1.5,
                   early_stop_patience: int = 10, threshold: float = 2.0, steps_per_epoch: int | None = None,
                   max_batch: int = 1024,
                   deadline: float | None = None, seed: int = 0, progress: bool = True,
                   flush_denormals: bool | None = None) -> NeuralCleanseResult:
    """Reverse-engineer one trigger per class on the clean images ``x`` (N,C,H,W) in [0,1].

    An epoch is one pass over ``x`` in mini-batches of ``batch_size`` images (each image stamped with all K
    candidate triggers, chunked so at most ``max_batch`` images go through the model at once). The reference
    code runs up to 1000 epochs; 40 with early stopping is enough for small images and keeps an audit in budget.
    ``deadline`` (a ``time.monotonic()`` value) stops early; the best triggers found so far are returned and
    ``stopped_early_by_deadline`` says so. The model is used in eval mode and left as found. ``flush_denormals``:
    subnormal floats are flushed to zero during the optimisation (:func:`xaisec.numerics.flush_denormals`).
    """
    check_images(x, "clean images")
    epochs, batch_size = check_int(epochs, "epochs", low=1), check_int(batch_size, "batch_size", low=1)
    patience = check_int(patience, "patience", low=1)
    early_stop_patience = check_int(early_stop_patience, "early_stop_patience", low=1)
    max_batch, seed = check_int(max_batch, "max_batch", low=1), check_int(seed, "seed", low=0)
    if steps_per_epoch is not None:
        steps_per_epoch = check_int(steps_per_epoch, "steps_per_epoch", low=1)
    lr = check_number(lr, "lr", low=0, low_open=True)
    init_cost = check_number(init_cost, "init_cost", low=0, low_open=True)
    success_threshold = check_number(success_threshold, "success_threshold", low=0, low_open=True, high=1)
    cost_multiplier = check_number(cost_multiplier, "cost_multiplier", low=1, low_open=True)
    threshold = check_number(threshold, "threshold", low=0, low_open=True)
    if deadline is not None:
        deadline = check_number(deadline, "deadline")
    start_time = time.monotonic()
    gen = torch.Generator().manual_seed(seed)
    x = match_model_dtype(x, model, "clean images")
    with torch.no_grad(), eval_mode(model):
        model_classes = int(model_logits(model, x[:1], "clean images").shape[1])
    k = model_classes if num_classes is None else check_int(num_classes, "num_classes", low=2, high=model_classes)
    if k < model_classes:
        warnings.warn(f"neural_cleanse analyses only classes 0..{k - 1} of the model's {model_classes} "
                      f"(num_classes={k}): a backdoor targeting another class cannot be found, and the anomaly "
                      "index is computed among the analysed classes only. Leave num_classes out to analyse all.",
                      PartialAnalysisWarning, stacklevel=2)
    c, h, w = x.shape[1:]
    dev = x.device
    mask_raw = _to_raw(torch.rand(k, 1, h, w, generator=gen)).to(dev).requires_grad_(True)
    pattern_raw = _to_raw(torch.rand(k, c, h, w, generator=gen)).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([mask_raw, pattern_raw], lr=lr, betas=(0.5, 0.9))
    sched = _CostSchedule(k, init_cost, patience, cost_multiplier, success_threshold, early_stop_patience)
    best_mask = torch.zeros(k, 1, h, w, device=dev)
    best_pattern = torch.zeros(k, c, h, w, device=dev)
    epochs_run = torch.zeros(k, dtype=torch.long)
    by_deadline = False
    with numerics.flush_denormals(flush_denormals), eval_mode(model):
        bar = tqdm(range(epochs), desc="neural cleanse", leave=False, disable=None if progress else True)
        for _ in bar:
            active = torch.nonzero(~sched.done).flatten()
            if len(active) == 0:
                break
            if deadline is not None and time.monotonic() > deadline:
                by_deadline = True
                break
            acc_sum = torch.zeros(k, dtype=torch.float64)
            reg_sum = torch.zeros(k, dtype=torch.float64)
            n_batches = 0
            chunk = max(1, max_batch // batch_size)
            for idx in _epoch_batches(len(x), batch_size, steps_per_epoch, gen):
                xb = x[idx]
                grad_mask, grad_pattern = torch.zeros_like(mask_raw), torch.zeros_like(pattern_raw)
                for cls in active.split(chunk):
                    m_raw, p_raw = mask_raw[cls], pattern_raw[cls]
                    mask, pattern = _squash(m_raw), _squash(p_raw)
                    x_adv = (1 - mask[:, None]) * xb[None] + (mask * pattern)[:, None]  # (k,B,C,H,W)
                    logits = model(x_adv.flatten(0, 1))
                    target = cls.to(dev).repeat_interleave(len(xb))
                    ce = F.cross_entropy(logits, target, reduction="none").view(len(cls), -1).mean(1)
                    reg = mask.flatten(1).sum(1)
                    loss = (ce + sched.cost[cls].to(ce) * reg).sum()
                    gm, gp = torch.autograd.grad(loss, [mask_raw, pattern_raw])
                    grad_mask += gm
                    grad_pattern += gp
                    with torch.no_grad():
                        acc_sum[cls] += (logits.argmax(1) == target).view(len(cls), -1).double().mean(1).cpu()
                        reg_sum[cls] += reg.detach().double().cpu()
                mask_raw.grad, pattern_raw.grad = grad_mask, grad_pattern
                opt.step()
                n_batches += 1
            active_mask = torch.zeros(k, dtype=torch.bool)
            active_mask[active] = True
            epochs_run[active] += 1
            improved = sched.update(acc_sum / n_batches, reg_sum / n_batches, active_mask)
            if improved.any():
                with torch.no_grad():
                    idx = improved.nonzero().flatten().to(dev)
                    best_mask[idx] = _squash(mask_raw[idx])
                    best_pattern[idx] = _squash(pattern_raw[idx])
            bar.set_postfix(active=len(active), refresh=False)
    found = sched.best_reg < math.inf
    with torch.no_grad():  # classes never reaching the success threshold keep their last trigger
        idx = (~found).nonzero().flatten().to(dev)
        best_mask[idx] = _squash(mask_raw[idx])
        best_pattern[idx] = _squash(pattern_raw[idx])
    result = _finish(model, x, best_mask, best_pattern, threshold, epochs_run, found, start_time, by_deadline, max_batch)
    result.model_classes = model_classes
    return result


def _epoch_batches(n: int, batch_size: int, steps: int | None, gen: torch.Generator) -> list[torch.Tensor]:
    """Index batches of one epoch: a shuffled pass over the data, or ``steps`` random batches."""
    if steps is None:
        return list(torch.randperm(n, generator=gen).split(batch_size))
    return [torch.randperm(n, generator=gen)[:batch_size] for _ in range(steps)]


def trigger_success(model: nn.Module, x: torch.Tensor, masks: torch.Tensor, patterns: torch.Tensor,
                    max_batch: int = 1024) -> torch.Tensor:
    """Fraction ``(K,)`` of ``x`` that each stamped trigger sends to its own class."""
    k = len(masks)
    masks, patterns = masks.to(x.device), patterns.to(x.device)
    hits = torch.zeros(k, device=x.device)
    with torch.no_grad(), eval_mode(model):
        for xb in x.split(max(1, max_batch // k)):
            x_adv = (1 - masks[:, None]) * xb[None] + (masks * patterns)[:, None]
            pred = model(x_adv.flatten(0, 1)).argmax(1).view(k, -1)
            hits += (pred == torch.arange(k, device=x.device)[:, None]).float().sum(1)
    return (hits / len(x)).cpu()


def _finish(model, x, masks, patterns, threshold, epochs_run, found, start_time, by_deadline, max_batch):
    masks, patterns = masks.cpu(), patterns.cpu()
    l1 = masks.flatten(1).sum(1)
    index = mad_anomaly_index(l1).float()
    below = l1 < l1.median()
    model_index = float(index[below].max()) if below.any() else 0.0
    result = NeuralCleanseResult(masks, patterns, l1, trigger_success(model, x, masks, patterns, max_batch), index,
                                 flag_small_outliers(l1, threshold), model_index, threshold,
                                 epochs_run.tolist(), found.tolist(), time.monotonic() - start_time, by_deadline)
    log.info("neural cleanse: L1 norms %s, anomaly index %.2f (flagged %s)",
             [round(v, 1) for v in l1.tolist()], model_index, result.flagged)
    return result
