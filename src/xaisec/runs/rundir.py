"""A run directory: where one run keeps everything needed to rebuild its report without rerunning.

Layout (files written atomically): ``config.yaml`` (resolved), ``environment.json`` (versions, seed, git
revision), ``status.json`` (``running`` / ``finished`` / ``failed`` / ``interrupted``, the stage reached and each
finished stage's time), one artifact per finished stage (``<stage>.safetensors``), ``cache/`` and
``checkpoints/`` for work inside a stage, ``log.jsonl``, ``metrics.json``, ``figures/`` and ``report.html``.

A run directory belongs to one run: :meth:`RunDir.claim` refuses a folder that holds another run (unless
``overwrite``), :meth:`RunDir.lock` keeps a second process out while a run writes, and a run whose process died
(SIGKILL, power loss) shows as ``interrupted``: its lock is free although its status still says ``running``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from .. import __version__
from ..errors import ConfigError
from ..io import atomic_write_json, atomic_write_text, check_writable_dir

STATUS_FILE, CONFIG_FILE, LOCK_FILE = "status.json", "config.yaml", ".lock"
#: files whose presence means a folder holds (the start of) a run
RUN_MARKERS = (CONFIG_FILE, STATUS_FILE)


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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is damaged (not readable JSON: {exc}); rerun with `xaisec run --resume` to "
                          "rewrite it, or start a new run") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is damaged: it holds {type(data).__name__}, not a JSON object")
    return data


def check_path(path: Path, what: str = "run directory") -> Path:
    """A path the file system can hold: no NUL byte, every component at most 255 bytes."""
    text = str(path)
    if "\0" in text:
        raise ConfigError(f"{what} {text!r} contains a NUL byte; give a plain path")
    long = [part for part in path.parts if len(part.encode()) > 255]
    if long:
        raise ConfigError(f"{what} has a path component of {len(long[0].encode())} bytes ({long[0][:40]}...); "
                          "the file system allows at most 255")
    return path


class RunDir:
    """Paths, markers and the lock of one run directory."""

    def __init__(self, path: str | Path):
        self.path = check_path(Path(path))
        self._lock_fd: int | None = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def cache(self) -> Path:
        return self.path / "cache"

    def holds_run(self) -> bool:
        return self.path.is_dir() and any((self.path / m).exists() for m in RUN_MARKERS)

    # -- starting, claiming and locking --------------------------------------------------------------------------
    def claim(self, overwrite: bool = False, create: bool = True) -> "RunDir":
        """Make sure a new run may be written here: the folder is new or empty, or ``overwrite`` replaces a run
        that is not running. Raises :class:`ConfigError` otherwise. With ``create=False`` it only checks (nothing
        is created or deleted); with ``create=True`` it clears an overwritten folder and creates it."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run directory {self.path} is an existing file; give another --out")
        if self.holds_run():
            if not overwrite:
                raise ConfigError(f"{self.path} already holds a run ({self.state()}); continue it with "
                                  f"`xaisec run --resume {self.path}`, give another --out, or replace it with "
                                  "--overwrite")
            if self.state() == "running":
                raise ConfigError(f"{self.path} holds a run that is still running in another process; "
                                  "it cannot be overwritten now")
        elif self.path.is_dir() and any(self.path.iterdir()) and not overwrite:
            raise ConfigError(f"{self.path} is a non-empty folder that is not a run directory; give another --out "
                              "or an empty folder (--overwrite deletes its contents)")
        if not create:
            check_writable_dir(self.path, "run directory")
            return self
        if overwrite and self.path.is_dir():
            shutil.rmtree(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot write the run directory {self.path}: {exc.strerror or exc}; give a writable "
                              "--out (or `out:` in the config)") from None
        return self

    @contextlib.contextmanager
    def lock(self) -> Iterator["RunDir"]:
        """Hold an exclusive lock on the run directory for a block; a second writer is refused at once. The
        operating system releases the lock when the process dies, which is how a killed run is recognised."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{self.path} is being written by another xaisec process; wait for it to finish "
                              "or give another --out") from None
        self._lock_fd = fd
        try:
            yield self
        finally:
            self._lock_fd = None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _locked_elsewhere(self) -> bool:
        if self._lock_fd is not None:
            return False
        path = self.path / LOCK_FILE
        if not path.is_file():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def create(self, config: dict[str, Any], seed: int) -> "RunDir":
        """Start a fresh run: write the resolved config, the environment and a ``running`` marker."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
        atomic_write_json(self / "environment.json", environment(seed))
        self.set_status("running", stage="setup")
        return self

    # -- reading -------------------------------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        """The stored config; a missing, binary, tagged or non-mapping file raises :class:`ConfigError`."""
        path = self / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"{self.path} is not a run directory (no {CONFIG_FILE}); give the folder `xaisec run` "
                              "printed")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path} is damaged (not a readable YAML config: {str(exc).splitlines()[0]}); "
                              "restore it or start a new run") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} is damaged: it holds {type(data).__name__}, not a mapping of config keys")
        return data

    def read_json(self, name: str) -> dict[str, Any]:
        """A JSON artifact of the run (``metrics.json``...); damaged files raise :class:`ConfigError`."""
        return _read_json(self / name)

    def status(self) -> dict[str, Any]:
        path = self / STATUS_FILE
        if not path.is_file():
            return {"state": "unknown"}
        try:
            return _read_json(path)
        except ConfigError:
            return {"state": "unknown"}

    def state(self) -> str:
        """``running`` / ``finished`` / ``failed`` / ``interrupted`` / ``unknown``; a ``running`` marker whose
        process no longer holds the lock is reported as ``interrupted``."""
        state = self.status().get("state", "unknown")
        if state == "running" and not self._locked_elsewhere() and self._lock_fd is None:
            return "interrupted"
        return state

    def set_status(self, state: str, **extra: Any) -> None:
        """Update the marker; ``finished`` is only written once every artifact is in place."""
        current = self.status()
        current.pop("error", None)
        current.update({"state": state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid(), **extra})
        current.setdefault("started", current["updated"])
        atomic_write_json(self / STATUS_FILE, current)

    @property
    def finished(self) -> bool:
        return self.status().get("state") == "finished"
