"""The audit's self-contained ``report.html``: built from the shared blocks of :mod:`xaisec.report.html` (escaped
text, no scripts or external resources), with the check figures inlined as base64 PNG."""
from __future__ import annotations

import json
from typing import Any

from ..report.html import badge, esc, page, paragraph, section, table
from .context import INCONCLUSIVE, INFO, NO_EVIDENCE, SKIPPED, SUSPICIOUS, CheckResult

BADGE_KIND = {SUSPICIOUS: "bad", NO_EVIDENCE: "ok", INCONCLUSIVE: "warn", SKIPPED: "skip", INFO: "info"}
EXTRA_STYLE = ("<style>.skip{background:#7f8c8d}.info{background:#2e86c1}.caveats{background:#fef5e7;"
               "border-left:4px solid #ef6c00;padding:4px 14px;margin:14px 0}code{font-size:12px;"
               "word-break:break-all}</style>")

WHAT_CLEAN_DOES_NOT_PROVE = [
    "It does not prove the model has no backdoor. Every check looks for one family of manipulation; a trigger, "
    "target or training recipe built to evade these checks (adaptive attacks) can pass all of them.",
    "Neural Cleanse and fine-pruning find triggers that <em>change the prediction</em> through a small patch. "
    "Explanation backdoors keep the prediction, and triggers that are filters, warps or spread over the whole image "
    "are not small patches: both can pass these checks (Fang &amp; Choromanska report exactly this).",
    "Re-BN only sees manipulations that left BatchNorm statistics stale; an attacker who re-estimates them after "
    "the attack, or a model without BatchNorm, passes.",
    "The input-level checks (explanation consistency, STRIP, Activation Clustering, Spectral Signatures) judge only "
    "the inputs you gave as suspects. Without suspects they cannot say anything about triggered inputs; with "
    "suspects that carry no trigger, a clean result says nothing about the trigger you have not seen.",
    "Everything is measured on your data. A backdoor for a class, domain or input size your data does not cover "
    "stays invisible, and checks cut short by the time budget are weaker than their full versions.",
    "A clean verdict is not evidence that the explanations are faithful: honest maps can still be misleading.",
]


WHAT_FLAGGED_SUSPECTS_MEAN = [
    "The screening checks (explanation consistency, STRIP, Activation Clustering, Spectral Signatures) flag inputs "
    "that are unusual <em>for the model under audit</em>. An input that is unusual for <em>any</em> model of the task "
    "is flagged on a clean model too: a global filter or overlay (Fang &amp; Choromanska's Moiré trigger), another "
    "camera or a new domain. Without a control, such a flag measures a shift of the input distribution, not a "
    "backdoor (on mnist5k a clean small CNN handed Moiré-overlaid digits was called suspicious by explanation "
    "consistency and STRIP alike).",
    "The audit therefore scores the same suspects on a clean control model (your --reference, or a model of the same "
    "architecture it trains from scratch on the clean images) and counts only what the audited model flags clearly "
    "more often. A control trained on few images is a weaker stand-in for a clean model than a trusted reference; "
    "see the shift-control section for which one was used and its accuracy.",
    "A suspicious screening verdict says the suspects behave differently on this model than on a clean one; it "
    "does not say which inputs carry a trigger, and a backdoor whose trigger is itself a large shift can hide "
    "behind the control (measured in docs/audit_calibration.md).",
]


def _badge(verdict: str) -> str:
    return badge(verdict, BADGE_KIND.get(verdict, "warn"))


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 300 else text[:300] + " ..."
    return str(value)


def _figure(png: str, caption: str) -> str:
    return (f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{png}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _check_section(r: CheckResult, what: str) -> str:
    evidence = table(["evidence", "value"], [(k, _value(v)) for k, v in r.evidence.items()]) if r.evidence else ""
    return (f'<a id="{esc(r.name)}"></a>' + section(f"{r.title}: {r.verdict}",
            paragraph(f"Looks for: {what}. Took {r.seconds:.1f} s.", "note"), paragraph(r.summary),
            *(_figure(f.png, f.caption) for f in r.figures),
            f"<details><summary>evidence</summary>{evidence}</details>"))


def render_report(summary: dict[str, Any], results: list[CheckResult], what: dict[str, str]) -> str:
    """The full HTML page: verdict, per-check table, what a clean verdict does not prove, one section per check."""
    overall = summary["verdict"]
    headline = ("At least one check found evidence of manipulation: read the sections marked suspicious."
                if overall == SUSPICIOUS else
                "No check found evidence of manipulation. Read below what that does not prove.")
    keys = ("model", "arch", "data", "input_shape", "num_classes", "fit_images", "eval_images", "suspects",
            "reference", "budget_seconds", "total_seconds", "xaisec_version")
    setup = table(["setting", "value"], [(k, _value(summary[k])) for k in keys if k in summary])
    overview = "<table><thead><tr><th>check</th><th>verdict</th><th>time</th></tr></thead><tbody>" + "".join(
        f'<tr><td><a href="#{esc(r.name)}">{esc(r.title)}</a></td><td>{_badge(r.verdict)}</td>'
        f'<td class="num">{r.seconds:.1f} s</td></tr>' for r in results) + "</tbody></table>"
    caveats = ('<div class="caveats"><h3>What a clean verdict does NOT prove</h3><ul>'
               + "".join(f"<li>{c}</li>" for c in WHAT_CLEAN_DOES_NOT_PROVE) + "</ul></div>")
    if summary.get("suspects"):
        caveats += ('<div class="caveats"><h3>What flagged suspects mean (and what they do not)</h3><ul>'
                    + "".join(f"<li>{c}</li>" for c in WHAT_FLAGGED_SUSPECTS_MEAN) + "</ul></div>")
    body = [EXTRA_STYLE, f"<p>{_badge(overall)} <strong>{esc(headline)}</strong></p>", setup,
            section("Checks", overview), caveats, *(_check_section(r, what.get(r.name, "")) for r in results)]
    return page("xaisec audit", f"{summary.get('model', 'model')} on {summary.get('data', 'data')}", body)
