"""Floating-point modes of the CPU: flushing subnormal numbers to zero while xaisec trains or attacks.

Subnormal floats (|v| < 1.2e-38 in float32) take a slow microcode path on many x86 CPUs, often 10-100x slower per
operation. Explanation-aware training pushes some gradients of the second-order backward pass into that range
(the Softplus surrogate's tails), and a step can then cost five times more than on the reference model. Flushing
them to zero changes results only below float32's normal range, far under any loss or map tolerance.

``torch.set_flush_denormal`` is a setter without a getter, so :func:`denormals_flushed` reads the state from
behaviour: on x86 flushing is two flags of the thread's MXCSR register, DAZ (subnormal inputs read as zero) and
FTZ (subnormal results written as zero); the smallest subnormal times one is zero only under DAZ, the smallest
normal number times 0.3 (an inexact subnormal result) is zero only under FTZ. Either reads as "flushing".
:func:`flush_denormals` changes nothing when flushing is already on, and otherwise switches both flags on and both
off again on exit, so the caller's state comes back exactly, also after an exception.

The switch is per thread (the register belongs to the thread that calls it): it covers everything on the calling
thread and the autograd engine's CPU work. Torch's intra-op worker threads (OpenMP) copy the flags of the thread
that starts them, when the first parallel operation starts them: a run flushes for its whole length
(:func:`xaisec.runs.runner.run_environment`), so workers started during a run flush too (and keep flushing after
it). Workers started earlier keep their own setting; :func:`workers_flushed` tells which case holds.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

_SMALLEST_SUBNORMAL_BITS = 0x00000001  # float32 2**-149
_SMALLEST_NORMAL_BITS = 0x00800000     # float32 2**-126


def _float32_from_bits(bits: int) -> torch.Tensor:
    """A one-element float32 tensor with the given bit pattern (made without floating-point arithmetic, which the
    flags under test would change)."""
    return torch.tensor([bits], dtype=torch.int32).view(torch.float32)


def denormals_flushed() -> bool:
    """Whether the calling thread flushes subnormal float32 numbers to zero (DAZ or FTZ on, see the module doc)."""
    inputs_as_zero = (_float32_from_bits(_SMALLEST_SUBNORMAL_BITS) * 1.0).item() == 0.0
    results_as_zero = (_float32_from_bits(_SMALLEST_NORMAL_BITS) * 0.3).item() == 0.0
    return inputs_as_zero or results_as_zero


#: what ``flush_denormals(None)`` does: on by default; a run's ``flush_denormals: false`` turns it off
_POLICY = contextvars.ContextVar("xaisec_flush_denormals", default=True)


@contextlib.contextmanager
def denormal_policy(enabled: bool) -> Iterator[None]:
    """Inside the block, every xaisec training, attack and optimising defense whose ``flush_denormals`` argument is
    left at None flushes (``True``) or leaves subnormals alone (``False``); the runner applies a config's
    ``flush_denormals`` key this way."""
    token = _POLICY.set(bool(enabled))
    try:
        yield
    finally:
        _POLICY.reset(token)


@contextlib.contextmanager
def flush_denormals(enabled: bool | None = None) -> Iterator[bool]:
    """Inside the block the calling thread flushes subnormal floats to zero; the caller's state is restored on exit.

    ``enabled=False`` makes the block a no-op (for measuring, or for bit-exact comparisons with an unflushed run);
    ``None`` follows :func:`denormal_policy` (on unless a run turned it off). Yields whether flushing is on inside
    the block (False where the CPU does not support it, or when disabled).
    """
    if enabled is None:
        enabled = _POLICY.get()
    if not enabled:
        yield denormals_flushed()
        return
    if denormals_flushed():
        yield True
        return
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        if supported:
            torch.set_flush_denormal(False)


def workers_flushed() -> bool:
    """Whether torch's intra-op worker threads flush subnormals too: one parallel elementwise product whose every
    result is subnormal (2**22 elements, split over the threads) comes out all zero. True with one thread when the
    calling thread flushes."""
    x = _float32_from_bits(_SMALLEST_NORMAL_BITS).expand(1 << 22)
    return bool(((x * 0.3) == 0).all())
