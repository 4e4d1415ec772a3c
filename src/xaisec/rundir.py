"""A run directory: where one experiment keeps everything needed to rebuild its report without rerunning.

Layout (files written atomically): ``config.yaml`` (resolved), ``environment.json`` (versions, seed, git
revision), ``status.json`` (the marker: ``running`` / ``finished`` / ``failed``, and the stage reached),
``checkpoints/``, weights (safetensors), ``log.jsonl``, ``metrics.json``, ``samples.safetensors``,
``figures/`` and ``report.html``. Nothing here depends on the experiment kind.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .errors import ConfigError
from .io import atomic_write_json, atomic_write_text

STATUS_FILE = "status.json"


def unique_dir(base: Path) -> Path:
    """``base`` if it does not exist or is empty, else ``base-2``, ``base-3``, ..."""
    if not base.exists() or (base.is_dir() and not any(base.iterdir())):
        return base
    i = 2
    while Path(f"{base}-{i}").exists():
        i += 1
    return Path(f"{base}-{i}")


def git_revision() -> str | None:
    """The source tree's git commit (with ``+dirty`` if modified), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(seed: int) -> dict[str, Any]:
    """Versions, platform, seed and git revision of this run."""
    import numpy
    import torch

    return {"xaisec": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "numpy": numpy.__version__, "platform": platform.platform(), "machine": platform.machine(),
            "torch_threads": torch.get_num_threads(), "seed": seed, "git_revision": git_revision(),
            "command": " ".join(sys.argv)}


class RunDir:
    """Paths and markers of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def create(self, config: dict[str, Any], seed: int) -> "RunDir":
        """Start a fresh run: write the resolved config, the environment and a ``running`` marker."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        atomic_write_json(self / "environment.json", environment(seed))
        self.set_status("running", stage="setup")
        return self

    def read_config(self) -> dict[str, Any]:
        path = self / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"{self.path} is not a run directory (no config.yaml); give the folder `xaisec run` "
                              "printed")
        return yaml.safe_load(path.read_text()) or {}

    def status(self) -> dict[str, Any]:
        path = self / STATUS_FILE
        if not path.is_file():
            return {"state": "unknown"}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {"state": "unknown"}

    def set_status(self, state: str, **extra: Any) -> None:
        """Update the marker; ``finished`` is only written once every artifact is in place."""
        current = self.status()
        current.pop("error", None)
        current.update({"state": state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})
        current.setdefault("started", current["updated"])
        atomic_write_json(self / STATUS_FILE, current)

    @property
    def finished(self) -> bool:
        return self.status().get("state") == "finished"
