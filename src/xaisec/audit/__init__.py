"""``xaisec audit``: the checks a practitioner runs on a model they did not train.

>>> report = run_audit(model, load_data("mnist5k"), out="audit/", budget=300)
>>> report["verdict"], report["seconds_per_check"]

A check of your own: ``@register_check("name", "Title")`` on ``fn(ctx: AuditContext, deadline) -> Finding``, then
``run_audit(..., checks=[*DEFAULT_CHECKS, "name"])``; the runner adds its name, title and time.
"""
from .context import AUDIT_CHECKS, VERDICTS, AuditContext, CheckResult, Finding, register_check, skipped
from .loading import load_audit_model, load_suspects, model_input_shape
from .runner import DEFAULT_CHECKS, run_audit

__all__ = ["AUDIT_CHECKS", "DEFAULT_CHECKS", "VERDICTS", "AuditContext", "CheckResult", "Finding", "load_audit_model",
           "load_suspects", "model_input_shape", "register_check", "run_audit", "skipped"]
