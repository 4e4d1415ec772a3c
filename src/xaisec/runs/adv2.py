"""The ``adv2`` experiment kind: ADV² (Zhang et al., "Interpretable Deep Learning under Fire", USENIX Security
2020) from one config.

``prepare`` loads the data and builds the model and every interpreter once on two images (an untrained saver
stands in for the trained one), so user mistakes surface before the run directory exists. Stages:
``reference`` (the clean classifier, trained as in every kind) -> ``savers`` (the RTS saver) -> ``attack_set``
(attacked images, target classes, benign and target maps) -> ``pgd`` (PGD and PGD-based ADV2 against every
interpreter, Table 3 and Figures 4-6; the transfer matrix of Table 9) -> ``stadv`` (Sec. 6) -> ``detection``
(feature squeezing with the adaptive attack, Table 4; the interpreter ensemble) -> ``savers_adversarial``
(RTS^A, Sec. 7) -> ``rts_adversarial`` (ADV2 against RTS^A). Each attack inside a stage is cached
(``ctx.cached``), so a killed run loses no finished attack.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .. import explainers as xexplainers
from ..data import ImageDataset
from ..errors import ConfigError, DataError, XaisecError
from ..evasion.config import Adv2Config, explainer_class
from ..evasion.evaluate import attack_report, explain_batches, in_batches, logits, transfer_matrix
from ..evasion.objective import AttackObjective, InterpreterTerm
from ..evasion.pgd import PGD, Adv2PGD
from ..evasion.stadv import StAdv, Adv2StAdv
from ..evasion.targets import patch_maps, pick_class_examples, random_target_classes
from ..explainers import Explainer
from ..explainers.rts import FeatureSaliencyNet, SaliencyNet, Saver
from ..explainers.rts_train import RTSObjective, frozen, rts_loss, saver_from_spec, saver_spec
from ..maps import MapPostprocess
from ..records import Metric
from ..models import model_device
from ..train import TensorBatches
from .artifacts import Artifact
from .checkpoint import TrainingStage, schedule
from .common import TrainedModel, load_data, model_factory, train_reference, training_log
from .runner import Experiment, RunContext, Stage, register_experiment

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


def attack_term(cfg: Adv2Config, name: str, explainer: Explainer, post: MapPostprocess) -> InterpreterTerm:
    """The ADV2 loss term of interpreter ``name``: the type its explainer class declares, with the configured
    weight, Softplus surrogate and term options."""
    s = cfg.settings(name)
    return type(explainer).attack_term_type()(explainer=explainer, weight=s.weight, post=post,
                                              smooth_beta=s.smooth_beta, name=name, **s.term)


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


def prepare(cfg: Adv2Config) -> Adv2Inputs:
    data = load_data(cfg)
    if data.multilabel or data.x_train.dim() != 4:
        raise DataError(f"the adv2 experiment needs single-label image data; {data.name} is "
                        f"{'multi-label' if data.multilabel else 'tabular'}")
    if data.num_classes < 2:
        raise DataError(f"a targeted attack needs at least two classes; {data.name} has {data.num_classes}")
    n_cal = cfg.detection.calibration_images if cfg.detection.enabled else 0
    if cfg.n_images + n_cal > len(data.x_test):
        raise ConfigError(f"n_images ({cfg.n_images}) + detection.calibration_images ({n_cal}) exceed the "
                          f"{len(data.x_test)} test images of {data.name}; lower them")
    make_model = model_factory(cfg, data)
    model = make_model().eval()
    posts = {n: MapPostprocess(pool=cfg.map_pool, norm=cfg.settings(n).norm) for n in cfg.interpreters}
    saver = new_saver(cfg, model, data) if cfg.saver_interpreters() else None
    x2 = data.x_test[:2]
    for name in cfg.interpreters:
        try:
            explainer = build_interpreter(cfg, name, model, saver=saver)
            posts[name](explain_batches(explainer, x2, data.y_test[:2], 2))
            attack_term(cfg, name, explainer, posts[name])
        except XaisecError as exc:
            raise ConfigError(f"interpreter {name!r} does not fit {cfg.model.arch} on {data.name}: {exc}") from None
    return Adv2Inputs(data, make_model, posts)


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
    batches = TensorBatches(data.x_train, data.y_train, batch_size=r.batch_size, seed=cfg.seed)
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


def savers(ctx: RunContext) -> SaverModel:
    """Stage ``savers``: the RTS saver."""
    return train_saver(ctx, "rts", ctx.cfg.rts.objective)


def savers_adversarial(ctx: RunContext) -> SaverModel:
    """Stage ``savers_adversarial``: RTS^A, the saver trained with the stability term (from scratch or from RTS)."""
    r = ctx.cfg.rts
    init = ctx["savers"] if r.adversarial_init == "rts" else None
    return train_saver(ctx, "rts_adv", dataclasses.replace(r.objective, adv_weight=r.adversarial_weight), init)


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
        return attack_term(self.cfg, name, explainer or self.explainers[name], self.posts[name])

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
        under ``key`` (a resumed run reloads it)."""
        s, cfg = self.s, self.cfg

        def make() -> dict[str, Any]:
            start = time.perf_counter()
            kwargs = {"target_maps": dict(targets)} if targets else {}
            x_adv = in_batches(lambda xb, yb, **kw: attack(xb, yb, **kw), cfg.batch_size, s.x, s.y_target,
                               device=self.device, **kwargs)
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
        return patches if patches is not None else patch_maps(len(x), tuple(x.shape[-2:]), cfg.patch_fraction,
                                                              torch.Generator().manual_seed(cfg.seed + 1))
    return maps_of(data.x_train[pool_index], y_target)


def attack_set(ctx: RunContext) -> AttackSet:
    """Stage ``attack_set``: ``n_images`` random correctly classified test images, a random other class for each,
    calibration images for the detectors, and every interpreter's benign and target maps."""
    cfg, data = ctx.cfg, ctx.inputs.data
    b = Bench(ctx)
    gen = torch.Generator().manual_seed(cfg.seed)
    test_pred = logits(b.model, data.x_test).argmax(1)
    correct = torch.nonzero(test_pred == data.y_test).flatten()
    correct = correct[torch.randperm(len(correct), generator=gen)]
    n_cal = cfg.detection.calibration_images if cfg.detection.enabled else 0
    if len(correct) < cfg.n_images + n_cal:
        raise DataError(f"only {len(correct)} correctly classified test images; lower n_images ({cfg.n_images}) or "
                        f"detection.calibration_images ({n_cal})")
    index = correct[:cfg.n_images]
    x, y = data.x_test[index], data.y_test[index]
    x_cal = data.x_test[correct[cfg.n_images:cfg.n_images + n_cal]]
    y_target = random_target_classes(y, data.num_classes, gen)
    pool_index = torch.zeros(0, dtype=torch.long)
    if cfg.target == "class":
        pool_correct = logits(b.model, data.x_train).argmax(1) == data.y_train
        pool_index = pick_class_examples(y_target, data.y_train, pool_correct, torch.Generator().manual_seed(cfg.seed + 2))
    benign = {n: b.maps(n, x, y) for n in cfg.interpreters}
    patches = patch_maps(len(x), tuple(x.shape[-2:]), cfg.patch_fraction,
                         torch.Generator().manual_seed(cfg.seed + 1)) if cfg.target == "patch" else None
    targets = {n: target_maps(cfg, data, x, y_target, pool_index, benign[n],
                              lambda xs, t, n=n: b.maps(n, xs, t), patches) for n in cfg.interpreters}
    return AttackSet(index, x, y, y_target, x_cal, pool_index, benign, targets,
                     (test_pred == data.y_test).double().mean().item())


# ---- attack stages ------------------------------------------------------------------------------------------------
def pgd(ctx: RunContext) -> Attacks:
    """Stage ``pgd``: PGD, PGD-based ADV2 against each interpreter, and the transfer matrix (Table 9)."""
    b, cfg, out = Bench(ctx), ctx.cfg, Attacks()
    p = cfg.pgd
    plain = b.attack("pgd", PGD(b.model, b.objective(), eps=p.eps, step=p.step, steps=p.steps), read_by=b.explainers)
    b.keep(out, "pgd", plain)
    out.numbers["pgd"] = b.report(plain["x"], plain["maps"])
    out.numbers["adv2_pgd"], rows = {}, {}
    for name in cfg.interpreters:
        key = f"adv2_pgd-{name}"
        run = b.attack(key, b.adv2_pgd([b.term(name)]), {name: b.s.targets[name]},
                       b.explainers if cfg.transfer else {name: b.explainers[name]})
        b.keep(out, key, run, {name: run["maps"][name]})
        rows[f"ADV2->{name}"] = run["maps"]
        out.numbers["adv2_pgd"][name] = b.report(run["x"], {name: run["maps"][name]})
    if cfg.transfer:
        rows["PGD"] = plain["maps"]
        out.numbers["transfer"] = {"l1_vs_benign": transfer_matrix(rows, b.s.benign, b.posts),
                                   "l1_vs_target": transfer_matrix(rows, b.s.targets, b.posts)}
    return out


def stadv(ctx: RunContext) -> Attacks:
    """Stage ``stadv``: StAdv and StAdv-based ADV2 (Sec. 6) against ``stadv.interpreters`` (default: all)."""
    b, cfg, out = Bench(ctx), ctx.cfg, Attacks()
    st, p = cfg.stadv, cfg.pgd
    names = st.interpreters or cfg.interpreters
    plain = b.attack("stadv", StAdv(b.model, b.objective(), tau=st.tau, lr=st.lr, steps=st.steps, init=st.init,
                                    max_flow=st.max_flow, seed=cfg.seed), read_by={n: b.explainers[n] for n in names})
    b.keep(out, "stadv", plain)
    out.numbers["stadv"] = b.report(plain["x"], plain["maps"])
    out.numbers["adv2_stadv"] = {}
    for name in names:
        terms = [b.term(name)]
        attack = Adv2StAdv(b.model, terms, tau=st.tau, lr=st.lr, steps=st.steps, warmup=st.warmup,
                           c=b.c(terms, st.c), init=st.init, max_flow=st.max_flow, prd=p.prd,
                           label_smoothing=p.label_smoothing, seed=cfg.seed)
        key = f"adv2_stadv-{name}"
        run = b.attack(key, attack, {name: b.s.targets[name]}, {name: b.explainers[name]})
        b.keep(out, key, run)
        out.numbers["adv2_stadv"][name] = b.report(run["x"], run["maps"])
    return out


def _earlier_attacks(ctx: RunContext) -> dict[str, torch.Tensor]:
    return {k: v for stage in ("pgd", "stadv") if stage in ctx.results for k, v in ctx[stage].x_adv.items()}


def detection(ctx: RunContext) -> Attacks:
    """Stage ``detection``: feature squeezing (Table 4) on every earlier attack, the adaptive ADV2 against it, and
    the interpreter ensemble detector with the joint ADV2 against all its members."""
    from ..defenses.feature_squeezing import FeatureSqueezingDetector
    from ..defenses.interpreter_ensemble import InterpreterEnsembleDetector
    from ..evasion.detection import SqueezingCalibration

    b, cfg, out = Bench(ctx), ctx.cfg, Attacks()
    d, s = cfg.detection, b.s
    on = lambda t: t.to(b.device)  # noqa: E731  (the detectors run where the model is)
    calib = SqueezingCalibration(FeatureSqueezingDetector(b.model, d.squeezers, d.fpr), on(s.x_cal))
    earlier = _earlier_attacks(ctx)
    rates = {"benign": calib.rates(on(s.x)), **{k: calib.rates(on(v)) for k, v in earlier.items()}}
    adaptive = {}
    for name in d.adaptive:
        key = f"adv2_pgd_adaptive-{name}"
        attack = b.adv2_pgd([b.term(name)], detector=calib.hinge_term(d.hinge), detector_weight=d.adaptive_weight)
        run = b.attack(key, attack, {name: s.targets[name]}, {name: b.explainers[name]})
        b.keep(out, key, run)
        rates[key] = calib.rates(on(run["x"]))
        adaptive[name] = b.report(run["x"], run["maps"])
    out.numbers["feature_squeezing"] = {"squeezers": calib.names, "fpr": d.fpr, "thresholds": calib.thresholds.tolist(),
                                        "joint_threshold": calib.detector.threshold, "calibration_images": len(s.x_cal),
                                        "rates": rates, "adaptive_attack": adaptive}
    if d.ensemble:
        members = {m: b.explainers[m] for m in d.ensemble}
        detector = InterpreterEnsembleDetector(b.model, members, b.posts, d.ensemble_metric, fpr=d.fpr,
                                               batch_size=cfg.batch_size).fit(on(s.x_cal))
        key = "adv2_pgd-ensemble"
        run = b.attack(key, b.adv2_pgd([b.term(m) for m in d.ensemble]), {m: s.targets[m] for m in d.ensemble}, members)
        b.keep(out, key, run)
        flagged = {"benign": s.x, "pgd": earlier["pgd"], **{f"adv2_pgd-{m}": earlier[f"adv2_pgd-{m}"] for m in d.ensemble},
                   key: run["x"]}
        out.numbers["ensemble"] = {"members": list(d.ensemble), "metric": d.ensemble_metric,
                                   "threshold": detector.threshold,
                                   "rates": {k: detector.detect(on(v)).double().mean().item()
                                             for k, v in flagged.items()},
                                   "joint_attack": b.report(run["x"], run["maps"])}
    return out


def _noise(x: torch.Tensor, kind: str, level: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(x.shape, generator=gen) if kind == "normal" else 2 * torch.rand(x.shape, generator=gen) - 1
    return (x + level * z.to(x)).clamp(0, 1)


def rts_adversarial(ctx: RunContext) -> Attacks:
    """Stage ``rts_adversarial``: for each saver-based interpreter, ADV2 against its RTS^A version, RTS^A reading
    the inputs crafted against the plain one, and both versions' map change under random noise."""
    b, cfg, out = Bench(ctx), ctx.cfg, Attacks()
    s, data = b.s, ctx.inputs.data
    saver = ctx["savers_adversarial"].saver(b.device)
    for name in cfg.saver_interpreters():
        e_adv = build_interpreter(cfg, name, b.model, saver=saver)
        benign = {name: b.maps(name, s.x, s.y, e_adv)}
        targets = {name: target_maps(cfg, data, s.x, s.y_target, s.pool_index, benign[name],
                                     lambda xs, t: b.maps(name, xs, t, e_adv), s.targets[name])}
        key = f"adv2_pgd-{name}_adv"
        run = b.attack(key, b.adv2_pgd([b.term(name, e_adv)]), targets, {name: e_adv})
        b.keep(out, key, run)
        out.maps[f"benign-{name}_adv"] = {name: benign[name][:cfg.figure_images]}
        out.maps[f"target-{name}_adv"] = {name: targets[name][:cfg.figure_images]}
        x_plain = ctx["pgd"].x_adv[f"adv2_pgd-{name}"]  # crafted against the plain interpreter, read by RTS^A
        crafted = b.report(x_plain, {name: b.maps(name, x_plain, explainer=e_adv)}, benign, targets)["maps"][name]
        sensitivity = {}
        for kind in ("normal", "uniform"):
            for level in cfg.rts.noise_levels:
                noisy = _noise(s.x, kind, level, cfg.seed)
                row = {}
                for label, e, ref in ((name, b.explainers[name], s.benign[name]), (f"{name}_adv", e_adv, benign[name])):
                    maps = b.maps(name, noisy, s.y, e)
                    l1 = b.report(noisy, {name: maps}, {name: ref}, {name: ref}, s.y)["maps"][name]["vs_benign"]["l1"]
                    mass = b.posts[name](ref).mean().item()  # RTS^A masks may be larger: the change relative to mass
                    row[label], row[f"{label}_relative"] = l1, l1 / max(mass, 1e-8)
                sensitivity[f"{kind}_{level:g}"] = row
        out.numbers[name] = {"adversarial": b.report(run["x"], run["maps"], benign, targets),
                             "crafted_against_plain": crafted, "noise_sensitivity_l1": sensitivity}
    return out


# ---- the kind -----------------------------------------------------------------------------------------------------
def _uses_saver(cfg: Adv2Config) -> bool:
    return bool(cfg.saver_interpreters())


def _rts_adversarial(cfg: Adv2Config) -> bool:
    return cfg.rts.adversarial and _uses_saver(cfg)


def context(ctx: RunContext) -> dict[str, Any]:
    """Setup and timing for ``metrics.json`` and the report."""
    cfg, data, s = ctx.cfg, ctx.inputs.data, ctx["attack_set"]
    seconds = {k: v for stage in ("pgd", "stadv", "detection", "rts_adversarial") if stage in ctx.results
               for k, v in ctx[stage].seconds.items()}
    out = {"dataset": data.summary(), "arch": cfg.model.arch, "test_accuracy": s.test_accuracy,
           "n_images": len(s.x), "target": cfg.target, "eps": cfg.pgd.eps,
           "map_postprocess": {n: p.describe() for n, p in ctx.inputs.posts.items()},
           "interpreters": list(cfg.interpreters), "class_names": list(data.class_names)}
    if "savers" in ctx.results:
        out["rts_saver"] = ctx["savers"].description
    if "savers_adversarial" in ctx.results:
        out["rts_adv_saver"] = f"{ctx['savers_adversarial'].description}, adversarially trained " \
                               f"(init: {cfg.rts.adversarial_init}, stability weight {cfg.rts.adversarial_weight:g})"
    if "detection" in ctx.results:
        out["squeezers"] = ctx["detection"].numbers["feature_squeezing"]["squeezers"]
    out["timing_s"] = seconds
    out["images_per_second"] = {k: len(s.x) / v for k, v in seconds.items() if v > 0}
    return out


@register_experiment
class Adv2Experiment(Experiment):
    """Classifier -> RTS saver -> attacked images -> PGD / StAdv / adaptive ADV2 -> RTS^A -> report."""

    name = "adv2"
    schema = Adv2Config
    stages = (Stage("reference", TrainedModel, train_reference),
              Stage("savers", SaverModel, savers, _uses_saver),
              Stage("attack_set", AttackSet, attack_set),
              Stage("pgd", Attacks, pgd),
              Stage("stadv", Attacks, stadv, lambda cfg: cfg.stadv.enabled),
              Stage("detection", Attacks, detection, lambda cfg: cfg.detection.enabled),
              Stage("savers_adversarial", SaverModel, savers_adversarial, _rts_adversarial),
              Stage("rts_adversarial", Attacks, rts_adversarial, _rts_adversarial))

    def prepare(self, cfg: Adv2Config) -> Adv2Inputs:
        return prepare(cfg)

    def metrics(self, ctx: RunContext) -> tuple[dict[str, Metric], dict[str, Any]]:
        from ..evasion import results

        records = results.pgd_records(ctx["pgd"].numbers)
        for stage, flatten in (("stadv", results.stadv_records), ("detection", results.detection_records),
                               ("rts_adversarial", results.rts_adversarial_records)):
            if stage in ctx.results:
                records.update(flatten(ctx[stage].numbers))
        return records, context(ctx)

    def report(self, run_dir: Path) -> Path:
        from ..evasion.report import build_report

        return build_report(run_dir)

    def headline(self, metrics: dict[str, Metric]) -> list[str]:
        from ..evasion.report import headline

        return headline(metrics)
