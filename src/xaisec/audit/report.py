"""The audit's self-contained ``report.html`` (figures inlined as base64 PNG, no external files or scripts).

A small builder of its own: the backdoor engine's report helpers were not on main when this was written.
"""
from __future__ import annotations

import html
import json
from typing import Any

from .context import INCONCLUSIVE, INFO, NO_EVIDENCE, SKIPPED, SUSPICIOUS, CheckResult

COLORS = {SUSPICIOUS: "#c0392b", NO_EVIDENCE: "#27ae60", INCONCLUSIVE: "#d68910", SKIPPED: "#7f8c8d", INFO: "#2e86c1"}

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


def _badge(verdict: str) -> str:
    return (f'<span class="badge" style="background:{COLORS.get(verdict, "#555")}">'
            f"{html.escape(verdict)}</span>")


def _evidence_table(evidence: dict[str, Any]) -> str:
    rows = []
    for key, value in evidence.items():
        if isinstance(value, float):
            text = f"{value:.4g}"
        elif isinstance(value, (list, dict)):
            text = json.dumps(value, default=str)
            if len(text) > 300:
                text = text[:300] + " ..."
        else:
            text = str(value)
        rows.append(f"<tr><td>{html.escape(str(key))}</td><td><code>{html.escape(text)}</code></td></tr>")
    return f'<table class="ev">{"".join(rows)}</table>' if rows else ""


def _check_section(r: CheckResult, what: str) -> str:
    figs = "".join(f'<figure><img alt="{html.escape(f.caption)}" src="data:image/png;base64,{f.png}">'
                   f"<figcaption>{html.escape(f.caption)}</figcaption></figure>" for f in r.figures)
    return (f'<section id="{r.name}"><h2>{html.escape(r.title)} {_badge(r.verdict)}</h2>'
            f'<p class="what">Looks for: {html.escape(what)}. Took {r.seconds:.1f} s.</p>'
            f"<p>{html.escape(r.summary)}</p>{figs}"
            f"<details><summary>evidence</summary>{_evidence_table(r.evidence)}</details></section>")


CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
.badge{color:#fff;border-radius:4px;padding:1px 8px;font-size:.75em;vertical-align:middle}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;font-size:.9em;text-align:left}
.ev code{font-size:.85em;word-break:break-all}.what{color:#555;font-size:.9em}
.warn{background:#fef5e7;border-left:4px solid #d68910;padding:.6em 1em}
figure{margin:.8em 0}figure img{max-width:100%}figcaption{font-size:.85em;color:#555}
section{border-top:1px solid #eee;margin-top:1.5em}"""


def render_report(summary: dict[str, Any], results: list[CheckResult], what: dict[str, str]) -> str:
    """The full HTML page: verdict, per-check table, what a clean verdict does not prove, one section per check."""
    overall = summary["verdict"]
    rows = "".join(f'<tr><td><a href="#{r.name}">{html.escape(r.title)}</a></td><td>{_badge(r.verdict)}</td>'
                   f"<td>{r.seconds:.1f} s</td></tr>" for r in results)
    setup = _evidence_table({k: summary[k] for k in ("model", "arch", "data", "input_shape", "num_classes",
                                                    "fit_images", "eval_images", "suspects", "reference",
                                                    "budget_seconds", "total_seconds", "xaisec_version")
                             if k in summary})
    caveats = "".join(f"<li>{c}</li>" for c in WHAT_CLEAN_DOES_NOT_PROVE)
    sections = "".join(_check_section(r, what.get(r.name, "")) for r in results)
    headline = ("At least one check found evidence of manipulation: read the sections marked suspicious."
                if overall == SUSPICIOUS else
                "No check found evidence of manipulation. Read below what that does not prove.")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>xaisec audit</title><style>{CSS}</style></head>"
            f"<body><h1>xaisec audit {_badge(overall)}</h1><p><strong>{html.escape(headline)}</strong></p>{setup}"
            f"<h2>Checks</h2><table><tr><th>check</th><th>verdict</th><th>time</th></tr>{rows}</table>"
            f'<div class="warn"><h3>What a clean verdict does NOT prove</h3><ul>{caveats}</ul></div>'
            f"{sections}</body></html>")
