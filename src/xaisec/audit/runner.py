"""Run the audit checks within a time budget and write ``audit.json`` + ``report.html``."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..data import ImageDataset
from ..errors import ConfigError, XaisecError
from ..io import atomic_write_json, atomic_write_text, check_writable_dir
from ..validation import check_number
from . import checks_inputs, checks_model  # noqa: F401  (importing registers the checks)
from .context import AUDIT_CHECKS, SUSPICIOUS, AuditContext, CheckResult, skipped
from .report import WHAT_CLEAN_DOES_NOT_PROVE, WHAT_FLAGGED_SUSPECTS_MEAN, render_report

log = logging.getLogger(__name__)
#: one week: a larger budget is a typo (and inf would run unbounded and be written to audit.json as invalid JSON)
MAX_BUDGET_SECONDS = 7 * 24 * 3600.0

#: the order checks run in: cheap model-level first, Neural Cleanse's triggers before fine-pruning uses them, the
#: clean control model before the input checks that compare against it
DEFAULT_CHECKS = ("accuracy", "neural_cleanse", "fine_pruning", "rebn", "shift_control", "explanation_consistency",
                  "strip", "activation_clustering", "spectral_signatures")


def _subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def run_audit(model: nn.Module, data: ImageDataset, *, out: str | Path | None = None, budget: float = 300.0,
              checks: Sequence[str] = DEFAULT_CHECKS, suspects: torch.Tensor | None = None,
              reference: nn.Module | None = None, fit_images: int = 1000, eval_images: int = 1000, seed: int = 0,
              progress: bool = True, meta: dict | None = None) -> dict:
    """Run ``checks`` on ``model`` with clean ``data`` (fit on ``x_train``, evaluate on ``x_test``) and optional
    ``suspects`` / trusted ``reference``; stop starting checks when ``budget`` seconds are spent (the rest are
    marked skipped). Writes ``audit.json`` and ``report.html`` into ``out`` if given; returns the JSON dict."""
    budget = check_number(budget, "--budget (seconds)", low=0, low_open=True, high=MAX_BUDGET_SECONDS)
    if out is not None:
        check_writable_dir(out, "audit output folder (--out)")  # before the checks run, not after
    if data.multilabel or data.x_train.dim() != 4:
        raise ConfigError("xaisec audit works on single-label image classifiers; this dataset is "
                          f"{'multi-label' if data.multilabel else 'tabular'}")
    unknown = [c for c in checks if c not in AUDIT_CHECKS]
    if unknown:
        for c in unknown:
            AUDIT_CHECKS.get(c)  # raises with suggestions
    start = time.monotonic()
    x_fit, y_fit = _subset(data.x_train, data.y_train, fit_images, seed)
    x_eval, y_eval = _subset(data.x_test, data.y_test, eval_images, seed + 1)
    ctx = AuditContext(model.eval(), data, x_fit, y_fit, x_eval, y_eval, start + budget, suspects, reference, seed,
                       progress)
    results: list[CheckResult] = []
    bar = tqdm(list(checks), desc="audit", disable=None if progress else True)
    for name in bar:
        check = AUDIT_CHECKS.get(name)
        bar.set_postfix(check=name, refresh=True)
        left = ctx.time_left()
        t0 = time.monotonic()
        if left < check.min_seconds:
            finding = skipped(f"Not run: the time budget ran out ({max(left, 0):.0f} s left of {budget:.0f} s). "
                              "Run again with a larger --budget.")
        else:
            try:
                finding = check.run(ctx, t0 + check.budget_share * left)
            except XaisecError as exc:
                finding = skipped(f"Not applicable to this model or data: {exc}")
        result = CheckResult(name, check.title, finding.verdict, finding.summary, finding.evidence, finding.figures,
                             time.monotonic() - t0)
        log.debug("audit %s: %s (%.1f s) %s", name, result.verdict, result.seconds, result.summary)
        results.append(result)
    reconcile(results)
    total = time.monotonic() - start
    suspicious = [r.name for r in results if r.verdict == SUSPICIOUS]
    summary = {"verdict": SUSPICIOUS if suspicious else "no evidence", "suspicious_checks": suspicious,
               "input_shape": list(data.input_shape), "num_classes": data.num_classes, "data": data.name,
               "fit_images": len(x_fit), "eval_images": len(x_eval),
               "suspects": 0 if suspects is None else len(suspects), "reference": reference is not None,
               "budget_seconds": budget, "total_seconds": round(total, 2), "xaisec_version": __version__,
               **(meta or {})}
    report = {**summary, "check_order": [r.name for r in results], "checks": {r.name: r.to_dict() for r in results},
              "seconds_per_check": {r.name: round(r.seconds, 2) for r in results},
              "what_a_clean_verdict_does_not_prove": [_plain(c) for c in WHAT_CLEAN_DOES_NOT_PROVE]}
    if suspects is not None:
        report["what_flagged_suspects_mean"] = [_plain(c) for c in WHAT_FLAGGED_SUSPECTS_MEAN]
    if out is not None:
        out = Path(out)
        atomic_write_json(out / "audit.json", report)
        what = {n: AUDIT_CHECKS.get(n).what_it_tests for n in checks}
        atomic_write_text(out / "report.html", render_report(summary, results, what))
    return report


def reconcile(results: list[CheckResult]) -> None:
    """Cross-reference Neural Cleanse and fine-pruning in Neural Cleanse's summary (verdicts are not changed):
    a flagged trigger that pruning of dormant channels disables is confirmed; one that survives lacks Liu et al.'s
    dormant-neuron signature, which backdoors fine-tuned into a trained model need not have either."""
    by_name = {r.name: r for r in results}
    nc, fp = by_name.get("neural_cleanse"), by_name.get("fine_pruning")
    if nc is None or fp is None or nc.verdict != SUSPICIOUS or "candidates" not in fp.evidence:
        return
    flagged = set(nc.evidence.get("flagged_classes", []))
    removed = set(fp.evidence.get("removed_classes", []))
    if flagged & removed:
        nc.summary += " Fine-pruning confirms it: pruning dormant channels disables the flagged trigger."
    elif flagged & set(fp.evidence["candidates"]):
        nc.summary += (" The flagged trigger survives fine-pruning (it uses the same channels as clean inputs): "
                       "that does not clear it, since backdoors fine-tuned into a trained model need not hide in "
                       "dormant channels, but a naturally easy class looks the same.")


def _plain(text: str) -> str:
    return text.replace("<em>", "").replace("</em>", "").replace("&amp;", "&")
