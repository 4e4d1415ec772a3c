"""``xaisec audit``: the checks a practitioner runs on a model they did not train.

>>> report = run_audit(model, load_dataset("mnist5k"), out="audit/", budget=300)
>>> report["verdict"], report["seconds_per_check"]
"""
from .context import AUDIT_CHECKS, VERDICTS, AuditContext, CheckResult
from .loading import load_audit_data, load_audit_model, load_suspects
from .runner import DEFAULT_CHECKS, run_audit

__all__ = ["AUDIT_CHECKS", "DEFAULT_CHECKS", "VERDICTS", "AuditContext", "CheckResult", "load_audit_data",
           "load_audit_model", "load_suspects", "run_audit"]
