"""Input-level audit checks: calibrated on clean data, they screen the suspect inputs when the user gives some
(``--suspects``); without suspects they report the clean calibration only.

shift control -> explanation consistency -> STRIP -> Activation Clustering -> Spectral Signatures.

Each screening check also scores the suspects on a clean control model (:mod:`xaisec.audit.shift_control`) and
calls them suspicious only when the audited model flags them clearly more often than the clean control does: a
detector that flags a global change of the inputs on any model measures a distribution shift, not a backdoor.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ..defenses.activation_clustering import activation_clustering, misclustering
from ..defenses.explanation_consistency import ExplanationConsistency, auroc
from ..defenses.spectral_signatures import spectral_signatures
from ..defenses.strip import STRIPDetector
from ..errors import ModelError
from ..train import eval_mode, predict
from .context import INFO, NO_EVIDENCE, SUSPICIOUS, AuditContext, Figure, Finding, register_check, skipped
from .figures import histograms_figure, scatter_figure
from .shift_control import (AUROC_EXCESS, PAIRED_SHARE, beyond_control, control_sentence, paired_share, robust_z,
                            shift_control, usable_control)

#: a suspect set is flagged when this share of it is detected and it is at least 3x the clean false-positive rate
FLAG_SHARE = 0.2
N_CALIBRATION = 300


def _flagged_share(detected: float, fpr: float) -> bool:
    return detected >= FLAG_SHARE and detected >= 3 * max(fpr, 1e-3)


def explainers_for(model: nn.Module) -> list[str]:
    """Grad-CAM, SimpleGrad and VisualBackProp for conv nets (Fang's three), gradient methods otherwise."""
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return ["gradcam", "simplegrad", "vbp"] if has_conv else ["simplegrad", "inputxgrad"]


@register_check("shift_control", "Shift control (the suspects on a clean model)", budget_share=0.3,
                what_it_tests="how unusual the suspects are for a model known to be clean: the screening checks count "
                              "only what the audited model flags beyond it")
def check_shift_control(ctx: AuditContext, deadline: float) -> Finding:
    if ctx.suspects is None:
        return skipped("The shift control compares the suspects on a clean model; give --suspects to run it.")
    control = shift_control(ctx, deadline)
    evidence = {"source": control.source, "control_accuracy": control.accuracy, "seconds": round(control.seconds, 2),
                "paired_share_required": PAIRED_SHARE, "auroc_excess_required": AUROC_EXCESS}
    if control.model is None:
        return Finding(INFO, f"No clean control model: {control.reason}. The screening checks below decide alone, "
                             "so a global change of the inputs (filter, overlay, new domain) can make them flag a "
                             "clean model.", evidence)
    who = ("your trusted reference model" if control.source == "reference" else
           f"a model of the same architecture trained by the audit from scratch on {len(ctx.x_fit)} clean images")
    return Finding(INFO, f"The control is {who} (clean accuracy {control.accuracy:.1%}). Each screening check below "
                         "scores the suspects on it too and calls them suspicious only when the audited model reacts "
                         f"to them clearly more: at least {PAIRED_SHARE:.0%} of the suspects more anomalous here than "
                         "on the control, in units of each model's own clean scores (explanation consistency, STRIP); "
                         f"{AUROC_EXCESS:.2f} more AUROC (Spectral Signatures); separable here but not there "
                         "(Activation Clustering).", evidence)


@register_check("explanation_consistency", "Explanation consistency (interpreters, perturbations, reference)",
                budget_share=0.5, what_it_tests="maps that disagree across interpreters, flip under small "
                "trigger-agnostic transformations, or differ from a trusted model: what explanation backdoors change")
def check_explanation_consistency(ctx: AuditContext, deadline: float) -> Finding:
    det = ExplanationConsistency(ctx.model, explainers_for(ctx.model), reference=ctx.reference, seed=ctx.seed)
    det.fit(ctx.x_fit[:N_CALIBRATION], fpr=0.05)
    clean = det.details(ctx.x_eval[:N_CALIBRATION])
    cal = det.calibration
    s_clean = det.combine(clean)
    fpr = float((s_clean > cal.threshold).float().mean())
    evidence = {"methods": det.methods, "transforms": [t.name for t in det.transforms], "agreement": det.agreement,
                "components": det.component_names, "threshold": cal.threshold, "clean_false_positive_rate": fpr,
                "clean_median": {n: float(clean[n].median()) for n in clean}}
    groups = {n: {"clean (held out)": clean[n].numpy()} for n in det.component_names}
    if ctx.suspects is None:
        fig = Figure("Explanation-consistency scores of held-out clean inputs (higher = less consistent)",
                     histograms_figure(groups))
        return Finding(INFO,
                       f"Calibrated on {len(ctx.x_fit[:N_CALIBRATION])} clean inputs ({', '.join(det.component_names)}; "
                       f"{fpr:.1%} of held-out clean inputs exceed the threshold). Give --suspects to screen inputs: "
                       "this check looks at inputs, it cannot tell from the model alone.", evidence, [fig])
    sus = det.details(ctx.suspects)
    s_sus = det.combine(sus)
    detected = float((s_sus > cal.threshold).float().mean())
    evidence.update({"suspect_detection_rate": detected,
                     "auroc_suspects_vs_clean": {n: auroc(clean[n], sus[n]) for n in clean},
                     "auroc_combined": auroc(s_clean, s_sus)})
    for n in det.component_names:
        groups[n]["suspects"] = sus[n].numpy()
    control, control_rate, share = usable_control(ctx), None, None
    if control.model is not None:
        # the same detector on the clean control: calibrated on the same clean images, scoring the same suspects
        cdet = ExplanationConsistency(control.model, explainers_for(control.model), seed=ctx.seed,
                                      reference=None if control.source == "reference" else ctx.reference)
        cdet.fit(ctx.x_fit[:N_CALIBRATION], fpr=0.05)
        c_sus = cdet.details(ctx.suspects)
        c_score = cdet.combine(c_sus)
        control_rate = float((c_score > cdet.calibration.threshold).float().mean())
        share = paired_share(robust_z(s_sus, cal.clean_scores), robust_z(c_score, cdet.calibration.clean_scores))
        evidence.update(control_detection_rate=control_rate, paired_share_over_control=share)
        for n in set(det.component_names) & set(cdet.component_names):
            groups[n]["suspects on the clean control"] = c_sus[n].numpy()
    fig = Figure("Explanation-consistency scores: held-out clean inputs vs suspects", histograms_figure(groups))
    best = max(det.component_names, key=lambda n: evidence["auroc_suspects_vs_clean"][n])
    text = (f"{detected:.1%} of the suspects exceed the clean-calibrated threshold (clean: {fpr:.1%}); AUROC suspects "
            f"vs clean {evidence['auroc_combined']:.3f} combined, {evidence['auroc_suspects_vs_clean'][best]:.3f} "
            f"for {best}.")
    alone = _flagged_share(detected, fpr)
    text += control_sentence(control, alone, share, control_rate)
    verdict = SUSPICIOUS if alone and beyond_control(share) else NO_EVIDENCE
    prefix = "The suspects' explanations are inconsistent where clean ones are not: " if verdict == SUSPICIOUS else ""
    return Finding(verdict, prefix + text, evidence, [fig])


@register_check("strip", "STRIP (prediction entropy under superimposition)", budget_share=0.3,
                what_it_tests="suspect inputs whose prediction survives blending with other images (trigger-carrying "
                              "inputs of prediction backdoors)")
def check_strip(ctx: AuditContext, deadline: float) -> Finding:
    if ctx.suspects is None:
        return skipped("STRIP screens inputs; give --suspects to run it.")
    det = _strip(ctx, ctx.model)
    clean, sus = det.score(ctx.x_eval[:N_CALIBRATION]), det.score(ctx.suspects)
    fpr = float((clean > det.threshold).float().mean())
    detected = float((sus > det.threshold).float().mean())
    evidence = {"threshold": det.threshold, "suspect_detection_rate": detected, "clean_false_positive_rate": fpr,
                "auroc_suspects_vs_clean": auroc(clean, sus)}
    control, control_rate, share = usable_control(ctx), None, None
    if control.model is not None:
        cdet = _strip(ctx, control.model)
        c_sus = cdet.score(ctx.suspects)
        control_rate = float((c_sus > cdet.threshold).float().mean())
        share = paired_share(robust_z(sus, clean), robust_z(c_sus, cdet.score(ctx.x_eval[:N_CALIBRATION])))
        evidence.update(control_detection_rate=control_rate, paired_share_over_control=share)
    fig = Figure("STRIP score (minus entropy of blended predictions; higher = more trigger-like)",
                 histograms_figure({"STRIP score": {"clean": clean.numpy(), "suspects": sus.numpy()}},
                                   {"STRIP score": det.threshold}))
    alone = _flagged_share(detected, fpr)
    verdict = SUSPICIOUS if alone and beyond_control(share) else NO_EVIDENCE
    return Finding(verdict,
                   f"{detected:.1%} of the suspects keep their prediction under superimposition more than 95% "
                   f"of clean inputs do (AUROC {evidence['auroc_suspects_vs_clean']:.3f})."
                   + control_sentence(control, alone, share, control_rate), evidence, [fig])


def _strip(ctx: AuditContext, model: nn.Module) -> STRIPDetector:
    # additive superimposition as in the public STRIP code: it keeps a bright patch trigger at full strength
    return STRIPDetector(model, n=32, frr=0.05, blend="add", seed=ctx.seed).fit(ctx.x_fit[:N_CALIBRATION],
                                                                                 ctx.x_eval[:N_CALIBRATION])


@torch.no_grad()
def head_inputs(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Last hidden layer activations (N,D): the input of ``model.head`` or of the last ``nn.Linear``."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ModelError("cannot find the last hidden layer: the model has no `head` and no nn.Linear")
        head = linears[-1]
    out: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda m, inputs: out.append(inputs[0].flatten(1)))
    try:
        with eval_mode(model):
            for xb in x.split(batch_size):
                model(xb)
    finally:
        handle.remove()
    return torch.cat(out)


def _population(ctx: AuditContext, control: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean held-out images + suspects: last-hidden-layer activations (N,D), predicted labels (N,) and is-suspect
    flags (N,) of the audited model (or of the clean ``control``); computed once per audit and model (Activation
    Clustering and Spectral Signatures share them)."""
    key = "population_control" if control else "population"
    if key not in ctx.shared:
        model = usable_control(ctx).model if control else ctx.model
        clean = ctx.x_eval[:N_CALIBRATION]
        x = torch.cat([clean, ctx.suspects])
        is_suspect = torch.cat([torch.zeros(len(clean), dtype=torch.bool),
                                torch.ones(len(ctx.suspects), dtype=torch.bool)])
        ctx.shared[key] = (head_inputs(model, x), predict(model, x).argmax(1), is_suspect)
    return ctx.shared[key]


@register_check("activation_clustering", "Activation Clustering (clean vs suspects)", budget_share=0.3,
                what_it_tests="suspect inputs that form their own cluster in the last hidden layer (Fang, Table 2)")
def check_activation_clustering(ctx: AuditContext, deadline: float) -> Finding:
    if ctx.suspects is None:
        return skipped("Activation Clustering needs a mix of clean and suspect inputs; give --suspects to run it.")
    acts, labels, is_suspect = _population(ctx)
    result, mis, keep = _clusters(acts, labels, is_suspect, ctx.seed)
    evidence = {"label_agnostic_misclustering": mis.label_agnostic_rate, "overlap": mis.verdict,
                "suspects_flagged": 1 - mis.poison_in_clean_cluster, "clean_flagged": mis.clean_in_poison_cluster}
    control, control_overlap = usable_control(ctx), None
    if control.model is not None:
        _, c_mis, _ = _clusters(*_population(ctx, control=True), ctx.seed)
        control_overlap = c_mis.verdict
        evidence.update(control_overlap=c_mis.verdict, control_misclustering=c_mis.label_agnostic_rate)
    top = int(torch.mode(labels[keep][is_suspect[keep]]).values) if is_suspect[keep].any() else int(labels[0])
    red = result.reduced.get(top)
    figures = []
    if red is not None:
        flags = is_suspect[keep][labels[keep] == top].numpy()
        figures.append(Figure(f"Last-hidden-layer activations of predicted class {ctx.data.class_names[top]} "
                              "(first two reduced dimensions)",
                              scatter_figure({"clean": red[~flags, :2], "suspects": red[flags, :2]}, "activations")))
    # a separation the clean control shows as well is the inputs' doing, not the model's
    separable = mis.verdict == "separable"
    verdict = SUSPICIOUS if separable and control_overlap != "separable" else NO_EVIDENCE
    text = (f"Suspects and clean inputs are {mis.verdict} in the model's last hidden layer (misclustering "
            f"rate {mis.label_agnostic_rate:.1%} over the classes the suspects are predicted as; < 5% "
            "separable, > 30% fully overlapping).")
    if control.model is None:
        text += control_sentence(control, separable)
    else:
        text += (f" In the clean control model they are {control_overlap} (misclustering "
                 f"{evidence['control_misclustering']:.1%}).")
        if separable and control_overlap == "separable":
            text += (" The suspects separate in a clean model too: a shift of the input distribution, not evidence "
                     "of a backdoor in this model.")
    return Finding(verdict, text, evidence, figures)


def _clusters(acts: torch.Tensor, labels: torch.Tensor, is_suspect: torch.Tensor, seed: int):
    """Activation Clustering over the classes the suspects are predicted as (a poisoned cluster can only hide
    there) that have enough samples: ``(result, misclustering, kept mask (N,))``."""
    counts = torch.bincount(labels)
    sus_counts = torch.bincount(labels[is_suspect], minlength=len(counts))
    keep = torch.isin(labels, torch.nonzero((counts > 2) & (sus_counts > 0)).flatten())
    from sklearn.exceptions import ConvergenceWarning  # imported on use: scikit-learn slows every command's start

    with warnings.catch_warnings():  # FastICA's convergence chatter on small classes; the clustering is reported
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = activation_clustering(acts[keep], labels[keep], random_state=seed)
    return result, misclustering(result, labels[keep], is_suspect[keep]), keep


@register_check("spectral_signatures", "Spectral Signatures (clean vs suspects)", budget_share=0.2,
                what_it_tests="suspect inputs that are outliers along the top singular direction of their class")
def check_spectral_signatures(ctx: AuditContext, deadline: float) -> Finding:
    if ctx.suspects is None:
        return skipped("Spectral Signatures needs a mix of clean and suspect inputs; give --suspects to run it.")
    a, result, sus = _spectral_auroc(*_population(ctx))
    flagged = float(result.is_poison[sus].float().mean())
    evidence = {"auroc_suspects_vs_clean": a, "suspects_flagged": flagged,
                "clean_flagged": float(result.is_poison[~sus].float().mean())}
    control, control_auroc = usable_control(ctx), None
    if control.model is not None:
        control_auroc = _spectral_auroc(*_population(ctx, control=True))[0]
        evidence["control_auroc"] = control_auroc
    beyond = control_auroc is None or a - control_auroc >= AUROC_EXCESS
    verdict = SUSPICIOUS if a >= 0.8 and beyond else NO_EVIDENCE
    text = (f"Within-class spectral outlier rank separates suspects from clean inputs with AUROC {a:.3f} "
            f"({flagged:.1%} of suspects removed at ART's default cut).")
    if control.model is None:
        text += control_sentence(control, a >= 0.8)
    else:
        text += f" In the clean control model: AUROC {control_auroc:.3f}."
        if a >= 0.8 and not beyond:
            text += (" The suspects stand out in a clean model too: a shift of the input distribution, not evidence "
                     "of a backdoor in this model.")
    return Finding(verdict, text, evidence)


def _spectral_auroc(acts: torch.Tensor, labels: torch.Tensor, is_suspect: torch.Tensor):
    """AUROC of the within-class spectral outlier rank, suspects vs clean: ``(auroc, result, suspect mask)``."""
    keep = torch.isin(labels, torch.nonzero(torch.bincount(labels) > 2).flatten())
    result = spectral_signatures(acts[keep], labels[keep])
    scores, sus = result.scores, is_suspect[keep]
    # per-class scores have per-class scales: rank within class before comparing across classes
    ranks = torch.zeros_like(scores)
    for label in labels[keep].unique():
        idx = torch.nonzero(labels[keep] == label).flatten()
        ranks[idx] = torch.from_numpy(np.argsort(np.argsort(scores[idx].numpy()))).double() / max(len(idx) - 1, 1)
    return auroc(ranks[~sus], ranks[sus]), result, sus
