"""Atomic file writes and safetensors weights.

Everything is written to a temporary file in the same folder and renamed, so a killed run never leaves a
half-written file that looks complete. Weights are safetensors only: loading them runs no code.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, ModelError


def check_writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Raise :class:`ConfigError` now, before any work, unless ``path`` is a folder xaisec can write into: an
    existing writable folder, or a path whose nearest existing parent is a writable folder (the missing folders
    are created later by the writers; nothing is created here). Returns ``path`` as a :class:`Path`."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} exists and is not a folder; give a folder path (it is created if missing)")
    parent = path
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {path} cannot be created: {parent} is a file, not a folder")
    try:  # a real write: permission bits, read-only mounts and ACLs all show up here
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".xaisec-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = "" if parent == path else f" (its nearest existing parent {parent})"
        raise ConfigError(f"{what} {path} is not writable{where}: {exc.strerror or exc}; choose another folder"
                          ) from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file + ``os.replace``; the file gets the permissions an ordinary
    ``open(path, "w")`` would give (0666 less the user's umask), not the temporary file's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Save ``model.state_dict()`` as safetensors, atomically."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write_bytes(path, save(state, metadata=metadata))


PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".bin", ".ckpt")


def _read_pickle_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a pickle checkpoint through ``torch.load(weights_only=True)``: tensors and plain
    containers only, so a file that tries to run code is rejected instead of executed."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError/EOFError... for refused or broken files
        raise ModelError(f"{path} was refused by the safe loader (torch.load weights_only=True): it is corrupt or holds "
                         f"objects other than tensors, possibly code. Nothing from it was executed. ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    return state


def read_weights(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in a weights file, on the CPU (also when it was saved from a GPU): safetensors, or (only
    with ``allow_pickle=True``) a pickle checkpoint read with ``torch.load(weights_only=True)``. Corrupt files
    raise :class:`ModelError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelError(f"{path} looks like a pickle checkpoint; xaisec loads safetensors by default, because "
                             "unpickling an untrusted file can run arbitrary code. Convert it where you trust it "
                             "(safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')) or "
                             "opt in with allow_pickle=True (--allow-pickle), which uses torch.load(weights_only=True)")
        return _read_pickle_state(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc


def check_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Raise :class:`ModelError` naming the first missing, unexpected and wrongly shaped keys when ``state`` does
    not fit ``model`` exactly."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        details = "; ".join(filter(None, [f"missing {missing[:5]}" if missing else "",
                                          f"unexpected {unexpected[:5]}" if unexpected else "",
                                          f"shape mismatch {wrong[:5]}" if wrong else ""]))
        raise ModelError(f"weights in {source} do not match the {type(model).__name__} architecture ({details}); "
                         "check --arch and the dataset's input size / number of classes (pretrained weights for "
                         "another task: finetune=True keeps all but the classifier head)")


def load_weights(model: nn.Module, path: str | Path, *, allow_pickle: bool = False) -> nn.Module:
    """Load weights into ``model`` (see :func:`read_weights`); mismatches and corrupt files raise :class:`ModelError`."""
    state = read_weights(path, allow_pickle=allow_pickle)
    check_state(model, state, path)
    check_weight_values(state, model.state_dict(), path)
    model.load_state_dict(state)
    return model


def check_weight_values(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path | str) -> None:
    """Refuse weights that would load without error but compute garbage: integer (or bool) tensors where the model
    has floats (load_state_dict would cast them silently) and NaN/inf values. Raises :class:`ModelError` naming
    the keys."""
    not_float = [f"{k} ({state[k].dtype})" for k in expected
                 if expected[k].is_floating_point() and not state[k].is_floating_point()]
    if not_float:
        raise ModelError(f"weights in {path} hold non-float tensors where the model has floats: {not_float[:5]}"
                         f"{f' and {len(not_float) - 5} more' if len(not_float) > 5 else ''}; the file was saved "
                         "from another model or damaged (casting would change the weights), re-export it")
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:
        raise ModelError(f"weights in {path} contain NaN or inf values in {non_finite[:5]}"
                         f"{f' and {len(non_finite) - 5} more' if len(non_finite) > 5 else ''}; a model with "
                         "non-finite weights cannot be explained or audited (was its training diverging?)")
