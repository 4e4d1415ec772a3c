"""The ADV2 loss: classifier term + c * interpreter term (+ d * detector term), per image.

``l_prd``: cross-entropy towards the target class (optionally label-smoothed, as the reference code, so the
gradient never vanishes) or a margin loss. ``l_int``: for each attacked interpreter, the mean squared difference
between its post-processed map (pooling + min-max, :class:`~xaisec.maps.MapPostprocess`) of the current input for
the target class and the post-processed target map; several interpreters are a weighted sum
(Zhang et al. 2020, https://arxiv.org/abs/1812.00891, Sec. 3-4). Every term is per image (B,), so attacking a
batch equals attacking its images one at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..explainers import Explainer, MaskState, MeaningfulPerturbation, RealTimeSaliency
from ..maps import MapPostprocess
from ..models import smooth_activations
from ..validation import check_finite, check_int, check_number
from .base import Terms

#: ``detector(model, x) -> (B,)`` differentiable term the adaptive attack adds (e.g. squeezing consistency)
DetectorTerm = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass
class InterpreterTerm:
    """One attacked interpreter: ``explainer``, its ``weight`` in the sum, the map post-processing ``post`` and,
    for gradient maps of ReLU models, ``smooth_beta``: the map is taken on a Softplus(beta) copy of the
    activations (ReLU has no second derivative). ``name`` keys its target maps (default: the explainer's name)."""

    explainer: Explainer
    weight: float = 1.0
    post: MapPostprocess = field(default_factory=MapPostprocess)
    smooth_beta: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.explainer.name
        self.weight = check_number(self.weight, f"interpreter weight of {self.name!r}", low=0)
        if self.smooth_beta is not None:
            self.smooth_beta = check_number(self.smooth_beta, f"smooth_beta of {self.name!r}", low=0, low_open=True)

    def reset(self) -> None:
        """Forget per-attack state (none here; see :class:`MaskTerm`)."""

    def loss(self, x: torch.Tensor, y_target: torch.Tensor, target_maps: torch.Tensor
             ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(classifier logits or None, per-image loss (B,))``: mean squared difference between the
        post-processed map of ``x`` for ``y_target`` and the (post-processed) ``target_maps``."""
        logits, maps = self.maps(x, y_target)
        return logits, (maps - target_maps).pow(2).flatten(1).mean(1)

    def maps(self, x: torch.Tensor, y_target: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(logits, post-processed maps)`` of ``x`` for ``y_target``, differentiable w.r.t. ``x``."""
        if self.smooth_beta is None:
            out = self.explainer(x, y_target, create_graph=True)
            return out.logits, self.post(out.maps)
        with smooth_activations(self.explainer.model, self.smooth_beta):
            out = self.explainer(x, y_target, create_graph=True)
        return None, self.post(out.maps)  # smooth logits are not the classifier's


@dataclass
class MaskTerm(InterpreterTerm):
    """MASK inside the attack, as ADV2's Algorithm 1: the masks persist across attack steps; each step takes
    ``inner_steps`` detached mask updates on the current input, then a differentiable look-ahead of
    ``explainer.unroll`` steps whose map enters the loss. The first call runs the full ``explainer.steps``, and so
    does every ``refresh``-th call (0: never), which keeps the warm-started masks close to what a fresh MASK run
    on the current input finds (the interpreter the attack must fool starts from scratch)."""

    inner_steps: int = 5
    refresh: int = 0
    state: MaskState | None = field(default=None, repr=False, init=False)
    calls: int = field(default=0, repr=False, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.explainer, MeaningfulPerturbation):
            raise ConfigError(f"MaskTerm needs the 'mask' explainer, got {self.explainer.name!r}")
        self.inner_steps = check_int(self.inner_steps, "MaskTerm inner_steps", low=0)
        self.refresh = check_int(self.refresh, "MaskTerm refresh", low=0)

    def reset(self) -> None:
        self.state, self.calls = None, 0

    def maps(self, x: torch.Tensor, y_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e: MeaningfulPerturbation = self.explainer  # type: ignore[assignment]
        fresh = (self.state is None or len(self.state.keep) != len(x)
                 or (self.refresh > 0 and self.calls % self.refresh == 0))
        self.calls += 1
        state = e.init_state(x) if fresh else self.state
        state = e.optimise(x, y_target, state, e.steps if fresh else self.inner_steps)
        self.state = state
        look = e.optimise(x, y_target, state, max(1, e.unroll), create_graph=True)
        return None, self.post(e.maps_of(look, tuple(x.shape[-2:])))


@dataclass
class RTSTerm(InterpreterTerm):
    """RTS inside the attack with ADV2's encoder loss (Zhang et al. 2020, Sec. 4, "ADV2 against RTS"): besides the
    map term, ``encoder_weight * mean_d (enc(x) - enc(c_t))^2`` pulls the saver's encoder output on ``x`` to the
    target class's mean encoder output ``prototypes[c_t]`` (``(K,D)``, from
    :func:`~xaisec.explainers.rts.encoder_prototypes` on the training images): the class selector then meets
    features that look like the target class, which moves the mask faster than the map term alone. With
    :class:`~xaisec.explainers.FeatureSaliencyNet` the encoder is the classifier's deep layer; with
    :class:`~xaisec.explainers.SaliencyNet`, the saver's own encoder. ``encoder_weight=0`` is the plain term."""

    encoder_weight: float = 0.0
    prototypes: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.explainer, RealTimeSaliency):
            raise ConfigError(f"RTSTerm needs the 'rts' explainer, got {self.explainer.name!r}")
        if self.encoder_weight < 0:
            raise ConfigError(f"encoder_weight must be >= 0, got {self.encoder_weight}")
        if self.encoder_weight > 0 and (self.prototypes is None or self.prototypes.dim() != 2):
            raise ConfigError("the encoder loss needs prototypes (K,D): encoder_prototypes(saver, model, x_train, "
                              "y_train, num_classes)")

    def encoder_loss(self, x: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
        """``(B,)``: mean squared difference between enc(x) and the target class's prototype."""
        saver = self.explainer.saver
        feats = saver.encode(self.explainer.model, x)
        if feats.shape[1] != self.prototypes.shape[1]:
            raise DataError(f"prototypes have {self.prototypes.shape[1]} features, the encoder gives {feats.shape[1]}")
        return (feats - self.prototypes.to(feats)[y_target]).pow(2).mean(1)

    def loss(self, x: torch.Tensor, y_target: torch.Tensor, target_maps: torch.Tensor
             ) -> tuple[torch.Tensor | None, torch.Tensor]:
        logits, loss = super().loss(x, y_target, target_maps)
        if self.encoder_weight > 0:
            loss = loss + self.encoder_weight * self.encoder_loss(x, y_target)
        return logits, loss


class AttackObjective:
    """``total = l_prd + c * sum_k w_k l_int,k + detector_weight * l_det``, each (B,).

    ``prd``: ``"ce"`` (cross-entropy with ``label_smoothing``) or ``"margin"`` (``max(max_j!=t z_j - z_t, -kappa)``).
    Target maps are given per attack call: ``prepare(x, y_target, target_maps={name: (B,1,H,W)})``.
    The detector term (adaptive attack) is active whenever the interpreter term is (c > 0), or always if
    there are no interpreters.

    ``targeted=False`` (no interpreters): the labels are the true classes and ``l_prd`` is *minus* the
    cross-entropy (or the margin ``max(z_y - max_j!=y z_j, -kappa)``), so minimising it leaves the true class.
    """

    def __init__(self, model: nn.Module, interpreters: Sequence[InterpreterTerm] = (), prd: str = "ce",
                 label_smoothing: float = 0.0, kappa: float = 0.0, detector: DetectorTerm | None = None,
                 detector_weight: float = 0.0, targeted: bool = True):
        if prd not in ("ce", "margin"):
            raise ConfigError(f"unknown classifier loss {prd!r}; use 'ce' or 'margin'")
        label_smoothing = check_number(label_smoothing, "label_smoothing", low=0, high=1, high_open=True)
        kappa = check_number(kappa, "kappa", low=0)
        detector_weight = check_number(detector_weight, "detector_weight", low=0)
        if not isinstance(targeted, bool):
            raise ConfigError(f"targeted must be True or False, got {targeted!r}")
        if not targeted and interpreters:
            raise ConfigError("ADV2 attacks on interpreters are targeted (a target class and target maps); "
                              "targeted=False is for plain PGD/StAdv only")
        self.targeted = targeted
        names = [t.name for t in interpreters]
        if len(set(names)) != len(names):
            raise ConfigError(f"interpreters must have distinct names, got {names}")
        self.model, self.interpreters = model, list(interpreters)
        self.prd, self.label_smoothing, self.kappa = prd, label_smoothing, kappa
        self.detector, self.detector_weight = detector, detector_weight
        self.target_maps: dict[str, torch.Tensor] = {}

    def prepare(self, x: torch.Tensor, y_target: torch.Tensor, target_maps=None) -> None:
        """Store the post-processed target map of each interpreter and reset stateful terms."""
        for term in self.interpreters:
            term.reset()
        self.target_maps = {}
        if not self.interpreters:
            return
        if isinstance(target_maps, torch.Tensor) and len(self.interpreters) == 1:
            target_maps = {self.interpreters[0].name: target_maps}
        if not isinstance(target_maps, dict):
            raise DataError("an attack on interpreters needs target_maps={interpreter name: (B,1,H,W) maps}")
        for term in self.interpreters:
            if term.name not in target_maps:
                raise DataError(f"no target maps for interpreter {term.name!r}; got maps for {sorted(target_maps)}")
            maps = target_maps[term.name]
            if not isinstance(maps, torch.Tensor):
                raise DataError(f"target maps for {term.name!r} must be a (B,1,H,W) tensor, got {type(maps).__name__}")
            # NaN targets would make every candidate's loss NaN and the attack silently return the clean inputs
            maps = check_finite(maps.detach(), f"target maps for {term.name!r}").to(x)
            if maps.shape != (len(x), 1, *x.shape[-2:]):
                raise DataError(f"target maps for {term.name!r} have shape {tuple(maps.shape)}; expected "
                                f"{(len(x), 1, *x.shape[-2:])} (one map per image at input resolution)")
            self.target_maps[term.name] = term.post(maps)

    def classifier_loss(self, logits: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
        if self.prd == "ce":
            ce = F.cross_entropy(logits, y_target, reduction="none", label_smoothing=self.label_smoothing)
            return ce if self.targeted else -ce
        target = logits.gather(1, y_target[:, None])[:, 0]
        other = logits.masked_fill(F.one_hot(y_target, logits.shape[1]).bool(), float("-inf")).amax(1)
        margin = other - target if self.targeted else target - other
        return torch.clamp(margin, min=-self.kappa)

    def __call__(self, x: torch.Tensor, y_target: torch.Tensor, c: float = 0.0) -> Terms:
        logits, interp = None, None
        if c > 0 and self.interpreters:
            interp = torch.zeros(len(x), dtype=x.dtype, device=x.device)
            for term in self.interpreters:
                term_logits, loss = term.loss(x, y_target, self.target_maps[term.name])
                logits = term_logits if logits is None else logits
                interp = interp + term.weight * loss
        if logits is None:
            logits = self.model(x)
        prd = self.classifier_loss(logits, y_target)
        total = prd if interp is None else prd + c * interp
        detect = None
        # with interpreters the detector term starts with them (stage 2): stage 1 first reaches the target class
        if self.detector is not None and self.detector_weight > 0 and (c > 0 or not self.interpreters):
            detect = self.detector(self.model, x)
            total = total + self.detector_weight * detect
        return Terms(total, logits.detach(), prd.detach(), None if interp is None else interp.detach(),
                     None if detect is None else detect.detach())
