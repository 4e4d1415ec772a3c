"""What the stages of the ``adv2`` experiment kind (:mod:`xaisec.runs.adv2`) share: their typed results, the
configured interpreters and their ADV2 loss terms (Zhang et al., "Interpretable Deep Learning under Fire", USENIX
Security 2020), the RTS saver and its training (Dabkowski & Gal, NeurIPS 2017), the target maps, and
:class:`Bench`, each attack stage's tools."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .. import explainers as xexplainers
from ..data import ImageDataset
from ..errors import ConfigError, XaisecError
from ..evasion.config import Adv2Config, explainer_class
from ..evasion.evaluate import attack_report, explain_batches, in_batches, logits
from ..evasion.objective import AttackObjective, InterpreterTerm, RTSTerm
from ..evasion.pgd import Adv2PGD
from ..evasion.targets import patch_maps
from ..explainers import Explainer
from ..explainers.rts import FeatureSaliencyNet, SaliencyNet, Saver, encoder_prototypes
from ..explainers.rts_train import RTSObjective, frozen, rts_loss, saver_from_spec, saver_spec
from ..maps import MapPostprocess
from ..models import model_device
from ..train import TensorBatches
from .artifacts import Artifact
from .checkpoint import TrainingStage, schedule
from .common import TrainedModel, training_log
from .runner import RunContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Adv2Inputs:
    """Everything checked before any training: the data, a model factory and each interpreter's map
    post-processing (for the attack loss and the metrics)."""

    data: ImageDataset
    make_model: Callable[[], nn.Module]
    posts: dict[str, MapPostprocess]


@dataclass
class SaverModel(TrainedModel):
    """A trained RTS saver: its weights (the file is a plain state dict), architecture ``spec``, description and
    per-epoch history."""

    spec: dict = field(default_factory=dict)
    description: str = ""

    def saver(self, device: torch.device | str = "cpu") -> Saver:
        return self.into(saver_from_spec(self.spec).to(device))


@dataclass
class AttackSet(Artifact):
    """Stage ``attack_set``: correctly classified test images ``x`` (N,C,H,W) (their ``index``), true labels ``y``
    and target classes ``y_target`` (N,); benign calibration images ``x_cal``; per interpreter the raw benign maps
    (true class) and target maps (N,1,H,W); ``pool_index``: the training images whose maps are the class targets
    (empty for other target kinds); the classifier's ``test_accuracy``."""

    index: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    y_target: torch.Tensor
    x_cal: torch.Tensor
    pool_index: torch.Tensor
    benign: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    test_accuracy: float = 0.0


@dataclass
class Attacks(Artifact):
    """Stages ``pgd``, ``stadv``, ``detection`` and ``rts_adversarial``: adversarial inputs {attack: (N,C,H,W)},
    raw maps of the first ``figure_images`` images {attack: {interpreter: (n,1,H,W)}}, the nested numbers of
    :func:`~xaisec.evasion.evaluate.attack_report` and the seconds each attack took."""

    x_adv: dict[str, torch.Tensor] = field(default_factory=dict)
    maps: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    numbers: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


# ---- interpreters, savers, terms ----------------------------------------------------------------------------------
def build_interpreter(cfg: Adv2Config, name: str, model: nn.Module, **provided: Any) -> Explainer:
    """Interpreter ``name`` for ``model`` with its configured options and what its class ``requires``
    (``provided``, e.g. ``saver=``)."""
    cls = explainer_class(name)
    missing = [r for r in cls.requires if provided.get(r) is None]
    if missing:
        raise ConfigError(f"interpreter {name!r} needs {missing}, which this run does not provide")
    return xexplainers.build(name, model, **cfg.settings(name).options, **{r: provided[r] for r in cls.requires})


def attack_term(cfg: Adv2Config, name: str, explainer: Explainer, post: MapPostprocess,
                data: ImageDataset | None = None) -> InterpreterTerm:
    """The ADV2 loss term of interpreter ``name``: the type its explainer class declares, with the configured
    weight, Softplus surrogate and term options. An :class:`~xaisec.evasion.objective.RTSTerm` gets ADV2's encoder
    loss when ``rts.encoder_weight`` > 0, with prototypes from the training images of ``data``."""
    s = cfg.settings(name)
    term_type = type(explainer).attack_term_type()
    extra: dict[str, Any] = {}
    if issubclass(term_type, RTSTerm) and cfg.rts.encoder_weight > 0:
        if data is None:
            raise ConfigError(f"rts.encoder_weight {cfg.rts.encoder_weight:g} needs the training data for the "
                              f"class prototypes of interpreter {name!r}")
        extra = {"encoder_weight": cfg.rts.encoder_weight,
                 "prototypes": encoder_prototypes(explainer.saver, explainer.model, data.x_train, data.y_train,
                                                  data.num_classes, cfg.batch_size)}
    return term_type(explainer=explainer, weight=s.weight, post=post, smooth_beta=s.smooth_beta, name=name,
                     **s.term, **extra)


def new_saver(cfg: Adv2Config, model: nn.Module, data: ImageDataset) -> Saver:
    """An untrained saver of the configured kind (``rts.encoder``) for ``model`` on ``data``."""
    r = cfg.rts
    torch.manual_seed(cfg.seed)
    if r.encoder == "own":
        return SaliencyNet(data.in_channels, data.num_classes, width=r.width).to(model_device(model))
    try:
        saver = FeatureSaliencyNet.for_classifier(model, data.input_shape, data.num_classes, r.width,
                                                  tuple(r.layers) or None)
    except XaisecError as exc:
        raise ConfigError(f"rts.layers {r.layers} do not fit {cfg.model.arch}: {exc}") from None
    return saver.to(model_device(model))


# ---- savers -------------------------------------------------------------------------------------------------------
def train_saver(ctx: RunContext, key: str, objective: RTSObjective, init: SaverModel | None = None) -> SaverModel:
    """Train the saver ``key`` (checkpointed every epoch) to explain the frozen reference classifier on the
    training set, from ``init``'s weights if given (Dabkowski & Gal, NeurIPS 2017; adversarially with
    ``objective.adv_weight`` > 0, ADV2 Sec. 7)."""
    cfg, data, r = ctx.cfg, ctx.inputs.data, ctx.cfg.rts
    model = ctx["reference"].into(ctx.inputs.make_model())
    saver = new_saver(cfg, model, data)
    if init is not None:
        saver.load_state_dict(init.weights)
    torch.manual_seed(cfg.seed)
    stage = TrainingStage(key, ctx.rd.checkpoints)
    optimizer = torch.optim.Adam(saver.parameters(), lr=r.lr)
    batches = TensorBatches(data.x_train, data.y_train, batch_size=r.batch_size, seed=cfg.seed,
                            pin_memory=model_device(model).type == "cuda")
    gen, epoch = torch.Generator(), [-1]

    def loss(s: Saver, batch) -> Any:
        if batches.epoch != epoch[0]:  # fake labels and alternatives drawn per epoch: a resumed run draws the same
            epoch[0] = batches.epoch
            gen.manual_seed(cfg.seed + batches.epoch)
        return rts_loss(s, model, batch[0], batch[1], objective, gen)

    log.info("%s: training the saver (%s)", key, saver.describe())
    with frozen(model):
        stage.train(saver, batches, loss, optimizer, r.epochs, r.lr, schedule("cosine", r.epochs),
                    progress=ctx.progress, on_log=training_log(ctx, stage))
    return SaverModel(dict(saver.state_dict()), stage.history, stage.stop_reason, saver_spec(saver), saver.describe())


# ---- what every attack stage works with ---------------------------------------------------------------------------
class Bench:
    """A stage's tools, rebuilt from the context (nothing here outlives the stage): the classifier, the
    interpreters, the attack set and the cached running of attacks."""

    def __init__(self, ctx: RunContext):
        self.ctx, self.cfg, self.posts = ctx, ctx.cfg, ctx.inputs.posts
        self.model = ctx["reference"].into(ctx.inputs.make_model())
        self.device = model_device(self.model)
        saver = ctx["savers"].saver(self.device) if "savers" in ctx.results else None
        self.explainers = {n: build_interpreter(self.cfg, n, self.model, saver=saver) for n in self.cfg.interpreters}
        self.s: AttackSet | None = ctx.results.get("attack_set")

    def maps(self, name: str, x: torch.Tensor, target: torch.Tensor | None = None,
             explainer: Explainer | None = None) -> torch.Tensor:
        """Raw maps of ``x`` by interpreter ``name`` for ``target`` (default: the classifier's prediction)."""
        if target is None:
            target = logits(self.model, x).argmax(1)
        return explain_batches(explainer or self.explainers[name], x, target, self.cfg.batch_size)

    def term(self, name: str, explainer: Explainer | None = None) -> InterpreterTerm:
        return attack_term(self.cfg, name, explainer or self.explainers[name], self.posts[name], self.ctx.inputs.data)

    def objective(self) -> AttackObjective:
        p = self.cfg.pgd
        return AttackObjective(self.model, prd=p.prd, label_smoothing=p.label_smoothing)

    def adv2_pgd(self, terms: Sequence[InterpreterTerm], detector=None, detector_weight: float = 0.0) -> Adv2PGD:
        p = self.cfg.pgd
        return Adv2PGD(self.model, terms, eps=p.eps, step=p.step, steps=p.steps, warmup=p.warmup,
                       c=self.c(terms, p.c), c_end=p.c_end, prd=p.prd, label_smoothing=p.label_smoothing,
                       detector=detector, detector_weight=detector_weight)

    def c(self, terms: Sequence[InterpreterTerm], default: float) -> float:
        """An interpreter's own ``c`` when it is attacked alone, else the attack's."""
        own = [self.cfg.settings(t.name).c for t in terms]
        return own[0] if len(terms) == 1 and own[0] is not None else default

    def attack(self, key: str, attack: Callable, targets: Mapping[str, torch.Tensor] | None = None,
               read_by: Mapping[str, Explainer] | None = None) -> dict[str, Any]:
        """``{"x": adversarial attack set, "seconds": (1,), "maps": {name: raw maps by read_by[name]}}``, cached
        under ``key`` (a resumed run reloads it). Under ``torchrun`` the ranks attack a share of the batches each
        (every attack is seeded per batch, so the result is one process's)."""
        s, cfg = self.s, self.cfg

        def make() -> dict[str, Any]:
            start = time.perf_counter()
            kwargs = {"target_maps": dict(targets)} if targets else {}
            x_adv = in_batches(lambda xb, yb, **kw: attack(xb, yb, **kw), cfg.batch_size, s.x, s.y_target,
                               device=self.device, gathered=True, **kwargs)  # torchrun: ranks share the batches
            seconds = time.perf_counter() - start
            log.info("%s: %d inputs in %.1f s", key, len(x_adv), seconds)
            return {"x": x_adv, "seconds": torch.tensor([seconds], dtype=torch.float64),
                    "maps": {n: self.maps(n, x_adv, explainer=e) for n, e in (read_by or {}).items()}}

        out = self.ctx.cached(key, make)
        return {"x": out["x"], "seconds": float(out["seconds"][0]), "maps": out.get("maps", {})}

    def report(self, x_adv: torch.Tensor, maps: Mapping[str, torch.Tensor], benign=None, targets=None,
               y_target: torch.Tensor | None = None, x: torch.Tensor | None = None) -> dict:
        s = self.s
        return attack_report(self.model, s.x if x is None else x, x_adv, s.y_target if y_target is None else y_target,
                             maps, s.benign if benign is None else benign, s.targets if targets is None else targets,
                             self.posts, self.cfg.iou_ks)

    def keep(self, out: Attacks, key: str, run: dict[str, Any], maps: Mapping[str, torch.Tensor] | None = None) -> None:
        """Record an attack in a stage result: inputs, seconds and the figure images' maps."""
        n = self.cfg.figure_images
        out.x_adv[key], out.seconds[key] = run["x"], run["seconds"]
        out.maps[key] = {name: m[:n] for name, m in (run["maps"] if maps is None else maps).items()}


def target_maps(cfg: Adv2Config, data: ImageDataset, x: torch.Tensor, y_target: torch.Tensor,
                pool_index: torch.Tensor, benign: torch.Tensor, maps_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                patches: torch.Tensor | None = None) -> torch.Tensor:
    """The target maps (N,1,H,W) of one interpreter for the configured kind: its ``benign`` maps, a random
    ``patch`` (shared by all interpreters) or its maps of the pool images of the target classes (``class``)."""
    if cfg.target == "benign":
        return benign
    if cfg.target == "patch":
        return patches if patches is not None else random_patches(cfg, x)
    return maps_of(data.x_train[pool_index], y_target)


def random_patches(cfg: Adv2Config, x: torch.Tensor) -> torch.Tensor:
    """The random ``patch`` target maps (N,1,H,W) of the attacked images ``x``, the same for every interpreter."""
    return patch_maps(len(x), tuple(x.shape[-2:]), cfg.patch_fraction, torch.Generator().manual_seed(cfg.seed + 1))


__all__ = ["Adv2Inputs", "AttackSet", "Attacks", "Bench", "SaverModel", "attack_term", "build_interpreter", "new_saver",
           "random_patches", "target_maps", "train_saver"]
