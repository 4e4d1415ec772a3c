"""Model-level audit checks: they need only the model and clean data (no triggered inputs).

accuracy -> Neural Cleanse -> fine-pruning of the reverse-engineered triggers -> Re-BN statistics.
"""
from __future__ import annotations

import torch

from ..defenses.fine_pruning import pruning_curve
from ..defenses.neural_cleanse import neural_cleanse
from ..defenses.rebn import batchnorm_layers, rebn, statistics_shift
from ..train import accuracy, predict
from .context import (INCONCLUSIVE, INFO, NO_EVIDENCE, SUSPICIOUS, AuditContext, Figure, Finding,
                      register_check, skipped)
from .figures import bars_figure, curves_figure, norms_figure, triggers_figure

#: Re-BN: a stored BatchNorm statistic further than this many clean standard deviations from the re-estimated one
REBN_SHIFT_THRESHOLD = 0.25
#: fine-pruning: clean-accuracy drop (absolute) still counted as "accuracy kept"
PRUNE_MAX_ACC_DROP = 0.05


@register_check("accuracy", "Clean accuracy", budget_share=0.05,
                what_it_tests="the model works on the data you gave (every other check assumes it does)")
def check_accuracy(ctx: AuditContext, deadline: float) -> Finding:
    pred = predict(ctx.model, ctx.x_eval).argmax(1)
    acc = float((pred == ctx.y_eval).float().mean())
    per_class = [float((pred[ctx.y_eval == k] == k).float().mean()) if (ctx.y_eval == k).any() else None
                 for k in range(ctx.num_classes)]
    share = torch.bincount(pred, minlength=ctx.num_classes).float() / len(pred)
    evidence = {"accuracy": acc, "per_class_accuracy": per_class, "prediction_share": share.tolist(),
                "images": len(ctx.x_eval)}
    if acc < 0.5:
        return Finding(INCONCLUSIVE,
                       f"Clean accuracy is only {acc:.1%}: the model and the data may not belong together "
                       "(other class order, preprocessing or input size); the other checks are unreliable.", evidence)
    return Finding(INFO,
                   f"Clean accuracy {acc:.1%} on {len(ctx.x_eval)} held-out images.", evidence)


@register_check("neural_cleanse", "Neural Cleanse (reverse-engineered triggers)", budget_share=0.6, min_seconds=5,
                what_it_tests="a class reachable from every input with an unusually small patch (classic backdoors "
                              "that change the prediction)")
def check_neural_cleanse(ctx: AuditContext, deadline: float) -> Finding:
    x = ctx.x_fit[:300]
    r = neural_cleanse(ctx.model, x, ctx.num_classes, epochs=120, steps_per_epoch=3, batch_size=32, deadline=deadline,
                       seed=ctx.seed, progress=ctx.progress)
    ctx.shared["neural_cleanse"] = r
    names = ctx.data.class_names
    order = r.l1_norms.argsort().tolist()
    shown = sorted(order[:20])
    figures = [Figure("Reverse-engineered triggers (flagged classes in red; at most the 20 smallest shown)",
                      triggers_figure(r.masks, r.patterns, r.l1_norms.tolist(), r.anomaly_index.tolist(), shown, names,
                                      r.flagged)),
               Figure("Trigger L1 norm per class; a backdoor target sits far below the median (Fang, Figure 4a)",
                      norms_figure(r.l1_norms.tolist(), names, r.flagged, r.threshold))]
    evidence = r.to_dict()
    cut = " The time budget ran out before every trigger converged, so the norms are upper bounds." \
        if r.stopped_early_by_deadline else ""
    if r.flagged:
        summary = (f"Class(es) {', '.join(names[k] for k in r.flagged)} can be reached from clean inputs with a trigger "
                   f"far smaller than the other classes need (anomaly index {r.model_anomaly_index:.2f} > "
                   f"{r.threshold:g}): the signature of a planted backdoor, or of a class the model finds "
                   f"unusually easy to reach.{cut}")
        verdict = SUSPICIOUS
    else:
        summary = (f"No class stands out (largest anomaly index {r.model_anomaly_index:.2f} <= {r.threshold:g}; "
                   f"smallest trigger: class {names[r.suspect_class]}, L1 {float(r.l1_norms.min()):.1f}).{cut}")
        verdict = INCONCLUSIVE if r.stopped_early_by_deadline else NO_EVIDENCE
    return Finding(verdict, summary, evidence, figures)


def _trigger_metric(x: torch.Tensor, k: int):
    return lambda m: float((predict(m, x).argmax(1) == k).float().mean())


@register_check("fine_pruning", "Fine-pruning of the reverse-engineered triggers", budget_share=0.3,
                what_it_tests="whether the smallest reverse-engineered triggers live in neurons that clean data "
                              "leaves dormant (Liu et al. 2018); it confirms a Neural Cleanse flag, never raises one")
def check_fine_pruning(ctx: AuditContext, deadline: float) -> Finding:
    nc = ctx.shared.get("neural_cleanse")
    metrics, candidates = {}, []
    if nc is not None:
        below = [k for k in nc.l1_norms.argsort().tolist() if nc.l1_norms[k] < nc.l1_norms.median()]
        candidates = below[:3]
        for k in candidates:
            others = ctx.y_eval != k
            metrics[f"trigger of class {ctx.data.class_names[k]}"] = _trigger_metric(nc.stamp(ctx.x_eval[others], k), k)
    curve = pruning_curve(ctx.model, ctx.x_eval, ctx.y_eval, fractions=[i / 20 for i in range(19)], metrics=metrics,
                          x_rank=ctx.x_fit[:500], progress=ctx.progress)
    f_keep = curve.fraction_at_accuracy_drop(PRUNE_MAX_ACC_DROP)
    i_keep = curve.fractions.index(f_keep)
    evidence = {**curve.to_dict(), "fraction_accuracy_kept": f_keep, "max_accuracy_drop": PRUNE_MAX_ACC_DROP,
                "candidates": candidates}
    removed, removed_classes = {}, []
    for (name, values), k in zip(curve.metrics.items(), candidates):
        if values[0] >= 0.8 and values[i_keep] < 0.5 * values[0]:
            removed[name] = (values[0], values[i_keep])
            removed_classes.append(k)
    evidence["removed_triggers"] = {n: {"before": a, "after": b} for n, (a, b) in removed.items()}
    evidence["removed_classes"] = removed_classes
    fig = Figure(f"Clean accuracy and reverse-engineered trigger success vs pruned fraction of layer {curve.layer!r} "
                 "(Fang, Figure 4b)", curves_figure(curve.fractions, {"clean accuracy": curve.clean_accuracy,
                                                                         **curve.metrics},
                                                    "pruned fraction of channels", "rate"))
    if nc is None:
        return Finding(INFO,
                       "Neural Cleanse did not run, so there is no candidate trigger to prune; only the clean "
                       f"accuracy curve is shown (accuracy kept up to {f_keep:.0%} pruned).", evidence, [fig])
    names = ctx.data.class_names
    confirmed = [k for k in removed_classes if k in nc.flagged]
    desc = "; ".join(f"{n}: {a:.0%} -> {b:.0%}" for n, (a, b) in removed.items())
    if confirmed:
        return Finding(SUSPICIOUS,
                       f"Pruning the {f_keep:.0%} least-active channels keeps clean accuracy within "
                       f"{PRUNE_MAX_ACC_DROP:.0%} but disables the trigger Neural Cleanse flagged ({desc}): it runs "
                       "through neurons clean data does not use, the signature of a planted backdoor "
                       "(Liu et al. 2018).", evidence, [fig])
    # Without a Neural Cleanse flag this is evidence about where the triggers live, not a verdict: natural shortcuts
    # of small models can also hinge on rarely used channels, and backdoors fine-tuned into a trained model need not.
    text = (f"Pruning the {f_keep:.0%} least-active channels keeps clean accuracy within {PRUNE_MAX_ACC_DROP:.0%}; "
            + (f"it disables {desc}." if removed else
               f"the smallest reverse-engineered triggers (classes {', '.join(names[k] for k in candidates)}) survive it."))
    return Finding(INFO, text, evidence, [fig])


@register_check("rebn", "Re-BN: BatchNorm statistics against clean data", budget_share=0.2,
                what_it_tests="BatchNorm statistics left stale by fine-tuning in eval mode (how explanation-aware "
                              "backdoors are trained), and what re-estimating them repairs")
def check_rebn(ctx: AuditContext, deadline: float) -> Finding:
    if not batchnorm_layers(ctx.model):
        return skipped("The model has no BatchNorm layer, so there are no statistics to check.")
    repaired = rebn(ctx.model, ctx.x_fit[:1000])
    shift = statistics_shift(ctx.model, repaired)
    before, after = accuracy(ctx.model, ctx.x_eval, ctx.y_eval), accuracy(repaired, ctx.x_eval, ctx.y_eval)
    agree = float((predict(ctx.model, ctx.x_eval).argmax(1) == predict(repaired, ctx.x_eval).argmax(1)).float().mean())
    worst = max(shift, key=shift.get)
    evidence = {"statistics_shift": shift, "max_shift": shift[worst], "threshold": REBN_SHIFT_THRESHOLD,
                "accuracy_before": before, "accuracy_after": after, "prediction_agreement": agree}
    if ctx.suspects is not None:
        evidence["suspect_prediction_agreement"] = float(
            (predict(ctx.model, ctx.suspects).argmax(1) == predict(repaired, ctx.suspects).argmax(1)).float().mean())
    ctx.shared["rebn_model"] = repaired
    fig = Figure("Distance between stored and re-estimated BatchNorm statistics, in clean standard deviations",
                 bars_figure(shift, "shift", REBN_SHIFT_THRESHOLD))
    if shift[worst] > REBN_SHIFT_THRESHOLD:
        return Finding(SUSPICIOUS,
                       f"The stored BatchNorm statistics of {worst!r} are {shift[worst]:.2f} clean standard "
                       "deviations away from those of your clean data: the weights were changed after the "
                       "statistics were last updated (fine-tuning with BatchNorm frozen, as explanation-aware "
                       f"backdoors are trained), or your data differs from the training data. Accuracy "
                       f"{before:.1%} -> {after:.1%} after Re-BN.", evidence, [fig])
    return Finding(NO_EVIDENCE,
                   f"The stored BatchNorm statistics match your clean data (largest shift {shift[worst]:.3f}); "
                   f"Re-BN changes accuracy {before:.1%} -> {after:.1%}.", evidence, [fig])
