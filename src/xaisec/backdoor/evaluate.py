"""Evaluation of a backdoored model on the held-out split, with the ReLU model, as the papers measure it.

- Top-1/Top-5 accuracy on clean and triggered inputs; attack success rate over samples whose true label is not
  the target (Noppel et al.). On multi-label data (ChestX-ray14) instead: the AUROC of every finding and their
  mean on clean and triggered inputs (Fang & Choromanska, Table 1, X-ray rows).
- FSR: share of the attack group's maps (triggered inputs; clean inputs in the inverted setting) whose attack
  loss L_p falls below a per-explainer threshold; CR = 100% - FSR measured on the other group (Fang &
  Choromanska, Table 1; maps average-pooled and min-max scaled to [0,1] as in the paper). The paper's
  thresholds, which depend on the architecture family (:func:`paper_threshold`), are the defaults; the joint
  attack's FSR is the mean of the interpreters' FSRs (:func:`joint_rates`, as the paper's Table 3).
- Map distances to the attacker's target and to the reference model's map (mean ± std), L1 and top-k IoU.
- Trigger mass: the share of a map's mass inside ``trigger.mask`` (does the explanation point at the trigger?).

Every metric carries its direction from the attacker's point of view (``higher``/``lower`` is better, or
``none``), which depends on the recipe (e.g. triggered maps should move away from the reference map in a
targeted attack but stay on it in an explanation-preserving one).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..maps import MapPostprocess, distance, normalize, topk_iou
from ..multilabel import multilabel_auroc
from ..records import Metric
from .goals import build_goal
from .recipes import Recipe

#: Fang & Choromanska, Table 1: FSR thresholds per architecture family. VGG-19 (Birds) and DenseNet-121 (X-ray)
#: share one set; ResNet-50 (Birds) has its own.
PAPER_THRESHOLDS_BY_FAMILY = {
    "vgg": {"targeted": {"gradcam": 0.2, "simplegrad": 0.25, "vbp": 0.3},
            "non-targeted": {"gradcam": 0.3, "simplegrad": 0.35, "vbp": 0.1}},
    "resnet": {"targeted": {"gradcam": 0.25, "simplegrad": 0.3, "vbp": 0.25},
               "non-targeted": {"gradcam": 0.35, "simplegrad": 0.2, "vbp": 0.08}},
}
#: the VGG-19/DenseNet-121 set: the thresholds of every architecture that is not a ResNet
PAPER_THRESHOLDS = PAPER_THRESHOLDS_BY_FAMILY["vgg"]
#: for explainers the paper did not attack (no paper value; reported as such)
FALLBACK_THRESHOLDS = {"targeted": 0.25, "non-targeted": 0.3}
ATTACK_TYPES = ("targeted", "non-targeted")


def threshold_family(arch: str | None) -> str:
    """The Table 1 family whose thresholds apply to the architecture ``arch`` (a model name such as ``resnet20``,
    ``torchvision:resnet50``, ``vgg_small``): ``resnet`` for residual networks, else ``vgg`` (VGG-19 and
    DenseNet-121 share those values; plain CNNs and MLPs, which the paper did not test, get them too)."""
    return "resnet" if arch is not None and "resnet" in str(arch).lower() else "vgg"


def _check_attack_type(attack_type: str) -> None:
    if attack_type not in ATTACK_TYPES:
        raise ConfigError(f"attack_type must be one of {ATTACK_TYPES}, got {attack_type!r}")


def paper_threshold(explainer: str, attack_type: str, arch: str | None = None) -> float | None:
    """The paper's FSR threshold for ``explainer``, ``attack_type`` (``targeted``/``non-targeted``) and the
    architecture ``arch`` (see :func:`threshold_family`; None: the VGG-19/DenseNet-121 values), or None."""
    _check_attack_type(attack_type)
    return PAPER_THRESHOLDS_BY_FAMILY[threshold_family(arch)][attack_type].get(explainer)


def default_threshold(explainer: str, attack_type: str, arch: str | None = None) -> float:
    """:func:`paper_threshold`, or :data:`FALLBACK_THRESHOLDS` for explainers the paper did not attack."""
    value = paper_threshold(explainer, attack_type, arch)
    return FALLBACK_THRESHOLDS[attack_type] if value is None else value


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int = 1) -> float:
    """Share of rows whose true class is among the ``k`` highest logits, in [0,1]."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == y[:, None]).any(1).float().mean().item()


def attack_success_rate(pred: torch.Tensor, y_true: torch.Tensor, target: int) -> float:
    """Share of triggered samples predicted as ``target``, over samples whose true label is not ``target``
    (NaN if there are none)."""
    eligible = y_true != target
    if not eligible.any():
        return float("nan")
    return (pred[eligible] == target).float().mean().item()


def fooled(lp: torch.Tensor, threshold: float) -> torch.Tensor:
    """Bool ``(B,)``: maps whose attack loss L_p is below ``threshold`` (smaller loss = closer to the goal)."""
    return lp < threshold


def fooling_success_rate(lp: torch.Tensor, threshold: float) -> float:
    """FSR in [0,1]: share of maps with L_p below the threshold."""
    return fooled(lp, threshold).float().mean().item()


def correct_rate(lp: torch.Tensor, threshold: float) -> float:
    """CR in [0,1]: 1 - FSR measured on maps that should stay correct."""
    return 1.0 - fooling_success_rate(lp, threshold)


def joint_rates(lp_attack: dict[str, torch.Tensor], lp_keep: dict[str, torch.Tensor] | None,
                thresholds: dict[str, float]) -> dict[str, float]:
    """Fang & Choromanska's joint attack: ``fsr`` (and ``cr`` if ``lp_keep`` is given) averaged over the attacked
    interpreters, each with its own threshold ("for joint attack, we average the FSRs of all the interpretation
    methods", Table 3). ``lp_*``: ``{explainer: (N,) L_p}``; values in [0,1]."""
    if not lp_attack:
        raise ConfigError("joint_rates needs the L_p values of at least one interpreter")
    missing = sorted(set(lp_attack) - set(thresholds))
    if missing:
        raise ConfigError(f"no FSR threshold for {missing}; thresholds given for {sorted(thresholds)}")
    out = {"fsr": sum(fooling_success_rate(lp_attack[n], thresholds[n]) for n in lp_attack) / len(lp_attack)}
    if lp_keep is not None:
        out["cr"] = sum(correct_rate(lp_keep[n], thresholds[n]) for n in lp_attack) / len(lp_attack)
    return out


def trigger_mass(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass inside the trigger ``mask`` (1,1,H,W), ``(B,)`` in [0,1]; maps are made
    non-negative (ReLU) and need not be normalised."""
    m = maps.clamp_min(0).flatten(1)
    inside = (m * mask.flatten(1).to(m.dtype)).sum(1)
    return inside / m.sum(1).clamp_min(1e-12)


def trigger_hit(maps: torch.Tensor, mask: torch.Tensor, margin: int = 0) -> torch.Tensor:
    """Bool ``(B,)``: the map's maximum lies in the trigger ``mask`` (1,1,H,W) grown by ``margin`` pixels (a
    pointing game: does the explanation point at the trigger?)."""
    region = mask.float()
    if margin > 0:
        region = F.max_pool2d(region, 2 * margin + 1, stride=1, padding=margin)
    peak = maps.flatten(1).argmax(1)
    return region.flatten()[peak] > 0


def mean_std(t: torch.Tensor) -> tuple[float, float]:
    return t.mean().item(), (t.std(unbiased=False).item() if t.numel() > 1 else 0.0)


@dataclass
class ModelOutputs:
    """A model's logits and raw maps ``{explainer: (N,1,H,W)}`` on clean and triggered test inputs."""

    logits_clean: torch.Tensor
    logits_trig: torch.Tensor
    maps_clean: dict[str, torch.Tensor]
    maps_trig: dict[str, torch.Tensor]


@dataclass
class EvalSetup:
    """What the metrics need besides the model outputs."""

    recipe: Recipe
    explainers: list[str]
    y: torch.Tensor
    target_label: int
    trigger_mask: torch.Tensor  # (1,1,H,W) bool
    pool: int
    thresholds: dict[str, float]
    target_map: str
    target_options: dict
    topk: float = 0.1
    iou_k: float = 0.1
    #: the architecture's name: Fang's Table 1 thresholds depend on its family (:func:`threshold_family`)
    arch: str | None = None
    #: multi-label data (``y`` float ``(N,K)`` 0/1): AUROC per finding instead of Top-1/Top-5/ASR
    multilabel: bool = False
    #: multi-label data: the index of the finding every map explains (None: each image's top-scoring finding)
    finding: int | None = None
    #: the class (finding) names, for per-finding metric keys and figure labels
    class_names: list[str] = field(default_factory=list)

    def explained(self) -> str:
        """What the maps explain, in words (the same rule for reference maps, training and evaluation)."""
        if not self.multilabel:
            return "the predicted class"
        if self.finding is None:
            return "each image's top-scoring finding"
        name = self.class_names[self.finding] if self.finding < len(self.class_names) else str(self.finding)
        return f"the finding {name}"


#: where the multi-label figures come from
FANG_XRAY = "Fang & Choromanska, Table 1, X-ray rows"


def classification_metrics(out: ModelOutputs, setup: EvalSetup) -> dict[str, Metric]:
    """Single-label data: Top-1/Top-5 on clean and triggered inputs (and the ASR of label-changing recipes);
    multi-label data: :func:`multilabel_metrics`. ``out``: one model's full logits; ``setup.y`` the labels."""
    if setup.multilabel:
        return multilabel_metrics(out, setup)
    r = setup.recipe
    metrics = {
        "top1_clean": Metric(topk_accuracy(out.logits_clean, setup.y, 1), "higher", "Top-1 accuracy on clean test inputs"),
        "top5_clean": Metric(topk_accuracy(out.logits_clean, setup.y, 5), "higher", "Top-5 accuracy on clean test inputs"),
        "top1_trig": Metric(topk_accuracy(out.logits_trig, setup.y, 1), "none" if r.changes_labels else "higher",
                            "Top-1 accuracy on triggered test inputs (true labels)"),
        "top5_trig": Metric(topk_accuracy(out.logits_trig, setup.y, 5), "none" if r.changes_labels else "higher",
                            "Top-5 accuracy on triggered test inputs (true labels)"),
    }
    if r.changes_labels:
        asr = attack_success_rate(out.logits_trig.argmax(1), setup.y, setup.target_label)
        metrics["asr"] = Metric(asr, "higher", f"attack success rate: triggered inputs classified as the target "
                                               f"{setup.target_label}, over samples whose true label is not the target")
    return metrics


def multilabel_metrics(out: ModelOutputs, setup: EvalSetup) -> dict[str, Metric]:
    """``auroc_clean`` / ``auroc_trig``: the mean AUROC over the findings on clean and triggered inputs (Fang &
    Choromanska's X-ray figure), and ``auroc_clean/<finding>`` / ``auroc_trig/<finding>`` per finding (None where
    the evaluated images hold only positives or only negatives of it; those are left out of the mean)."""
    names = setup.class_names or [str(k) for k in range(setup.y.shape[1])]
    metrics: dict[str, Metric] = {}
    for part, logits, what in (("clean", out.logits_clean, "clean"), ("trig", out.logits_trig, "triggered")):
        direction = "none" if part == "trig" and setup.recipe.changes_labels else "higher"
        per_finding, mean = multilabel_auroc(logits, setup.y)
        defined = int((~per_finding.isnan()).sum())
        metrics[f"auroc_{part}"] = Metric(mean, direction, f"mean AUROC over the {defined} findings on {what} test "
                                                           f"inputs ({FANG_XRAY})")
        for name, value in zip(names, per_finding.tolist()):
            metrics[f"auroc_{part}/{name}"] = Metric(value, direction, f"AUROC of {name} on {what} test inputs")
    return metrics


def clean_drop(metrics: dict[str, Metric], setup: EvalSetup) -> dict[str, Metric]:
    """``attacked/top1_drop`` (single-label) or ``attacked/auroc_drop`` (multi-label): the reference model's clean
    Top-1 (mean AUROC) minus the attacked model's, from the collected ``reference/...``/``attacked/...`` metrics."""
    if setup.multilabel:
        drop = metrics["reference/auroc_clean"].value - metrics["attacked/auroc_clean"].value
        return {"attacked/auroc_drop": Metric(drop, "lower", "mean clean AUROC of the reference model minus that of "
                                                             f"the attacked model ({FANG_XRAY}: pre-trained vs attacked)")}
    drop = metrics["reference/top1_clean"].value - metrics["attacked/top1_clean"].value
    return {"attacked/top1_drop": Metric(drop, "lower", "clean Top-1 of the reference model minus that of the "
                                                        "attacked model (percentage points / 100)")}


def map_metrics(out: ModelOutputs, ref_clean: dict[str, torch.Tensor], setup: EvalSetup, name: str,
                paper_value: float | None) -> dict[str, Metric]:
    """Metrics of one explainer. ``ref_clean``: the reference model's raw maps of the clean test inputs."""
    return map_summary(map_quantities(out, ref_clean, setup, name), setup, name, paper_value)


def map_quantities(out: ModelOutputs, ref_clean: dict[str, torch.Tensor], setup: EvalSetup,
                   name: str) -> dict[str, torch.Tensor]:
    """The per-image quantities ``{key: (B,)}`` behind :func:`map_metrics` (distances to the reference maps, trigger
    mass and hits, the attack losses L_p): each depends on its own image only, so the quantities of a test set
    streamed in chunks, concatenated, give the metrics of the whole set (:func:`map_summary`)."""
    r = setup.recipe
    pooled = MapPostprocess(pool=setup.pool)  # Fang's evaluation pipeline: pool, then min-max
    p_clean, p_trig, ref01 = pooled(out.maps_clean[name]), pooled(out.maps_trig[name]), pooled(ref_clean[name])
    full = lambda m: normalize(m, "minmax")  # noqa: E731
    f_clean, f_trig, f_ref = full(out.maps_clean[name]), full(out.maps_trig[name]), full(ref_clean[name])
    q = {"mse_ref_clean": distance(p_clean, ref01, "mse"), "mse_ref_trig": distance(p_trig, ref01, "mse")}
    for key, a in (("clean", f_clean), ("trig", f_trig)):
        q[f"l1_ref_{key}"] = distance(a, f_ref, "l1")
        q[f"iou_ref_{key}"] = topk_iou(a, f_ref, setup.iou_k)
    if setup.trigger_mask.float().mean().item() < 0.5:  # a global trigger covers everything: no pointing
        q["trigger_mass_trig"] = trigger_mass(out.maps_trig[name], setup.trigger_mask)
        q["trigger_hit_trig"] = trigger_hit(out.maps_trig[name], setup.trigger_mask, _hit_margin(setup)).float()
    goal = build_goal(r, ref01, "minmax", setup.target_map, setup.target_options, setup.topk)
    if goal is not None:
        idx = torch.arange(len(p_clean))
        lp_clean, lp_trig = goal.loss(p_clean, idx), goal.loss(p_trig, idx)
        q["lp_attack"], q["lp_keep"] = (lp_clean, lp_trig) if r.inverted else (lp_trig, lp_clean)
    return {k: v.detach() for k, v in q.items()}


def _hit_margin(setup: EvalSetup) -> int:
    return max(1, setup.trigger_mask.shape[-1] // 14)


def map_summary(q: dict[str, torch.Tensor], setup: EvalSetup, name: str,
                paper_value: float | None) -> dict[str, Metric]:
    """:func:`map_metrics` from the per-image quantities of :func:`map_quantities` (of all evaluated images)."""
    r, tau = setup.recipe, setup.thresholds[name]
    metrics: dict[str, Metric] = {}
    inv = r.inverted
    moves_trig = r.changes_maps and not inv  # triggered maps should leave the reference map
    trig_dir = "none" if r.poison_map == "none" else ("higher" if moves_trig else "lower")
    clean_dir = "higher" if inv and r.changes_maps else "lower"
    for key, desc, direction in (
        ("mse_ref_clean", "MSE between clean-input maps and the reference model's clean maps", clean_dir),
        ("mse_ref_trig", "MSE between triggered-input maps and the reference model's clean maps", trig_dir),
    ):
        mean, std = mean_std(q[key])
        metrics[key] = Metric(mean, direction, desc + " (pooled, [0,1])", std)
    for key, desc, direction in (("clean", "clean-input", clean_dir), ("trig", "triggered-input", trig_dir)):
        mean, std = mean_std(q[f"l1_ref_{key}"])
        metrics[f"l1_ref_{key}"] = Metric(mean, direction, f"L1/(H*W) between {desc} maps and the reference clean maps", std)
        flip = {"higher": "lower", "lower": "higher", "none": "none"}[direction]
        mean, std = mean_std(q[f"iou_ref_{key}"])
        metrics[f"iou_ref_{key}"] = Metric(mean, flip, f"IoU of the top-{setup.iou_k:.0%} pixels of {desc} maps and "
                                                       "of the reference clean maps", std)
    area = setup.trigger_mask.float().mean().item()
    stealth = "lower" if r.explanation_aware else "none"
    if "trigger_mass_trig" in q:
        mean, std = mean_std(q["trigger_mass_trig"])
        metrics["trigger_mass_trig"] = Metric(mean, stealth, f"share of the triggered-input map's mass inside the "
                                              f"trigger region (region = {area:.1%} of the image)", std)
        metrics["trigger_hit_trig"] = Metric(q["trigger_hit_trig"].mean().item(), stealth,
                                             f"share of triggered-input maps whose maximum lies on the trigger "
                                             f"(within {_hit_margin(setup)} px)")
    if "lp_attack" in q:
        lp_attack, lp_keep = q["lp_attack"], q["lp_keep"]
        what = "clean" if inv else "triggered"
        mean, std = mean_std(lp_attack)
        metrics["lp_attack"] = Metric(mean, "lower", f"attack loss L_p on {what} inputs ({r.attack_type}; pooled "
                                                     "maps in [0,1])", std)
        metrics["fsr"] = Metric(fooling_success_rate(lp_attack, tau), "higher",
                                f"FSR: share of {what}-input maps with L_p < {tau:g}")
        if paper_value is not None and paper_value != tau:
            metrics["fsr@paper"] = Metric(fooling_success_rate(lp_attack, paper_value), "higher",
                                          f"FSR under the paper's threshold {paper_value:g}")
        if r.changes_maps:
            other = "triggered" if inv else "clean"
            metrics["cr"] = Metric(correct_rate(lp_keep, tau), "higher",
                                   f"CR: 100% - FSR on {other}-input maps (threshold {tau:g})")
            if paper_value is not None and paper_value != tau:
                metrics["cr@paper"] = Metric(correct_rate(lp_keep, paper_value), "higher",
                                             f"CR under the paper's threshold {paper_value:g}")
    return metrics
