"""Helpers for tests that take finished run directories apart."""
from __future__ import annotations

import shutil
from pathlib import Path


def copy_without(run: Path, dest: Path, stages: tuple[str, ...]) -> Path:
    """A copy of the run directory ``run`` at ``dest`` without its report, figures, checkpoints, caches and the
    artifacts of ``stages``: what is left is what ``xaisec report`` may read."""
    shutil.copytree(run, dest)
    (dest / "report.html").unlink()
    for folder in ("figures", "checkpoints", "cache"):
        shutil.rmtree(dest / folder, ignore_errors=True)
    for stage in stages:
        (dest / f"{stage}.safetensors").unlink()
    return dest
