"""Data-parallel training across processes started by ``torchrun`` (one process per GPU or CPU worker).

Every rank runs the whole experiment on the same seeded data; inside :func:`xaisec.train.fit` each rank takes its
contiguous slice of every global batch (the batch order is the same seeded permutation on every rank) and the
gradients are averaged over ranks before each optimizer step, weighted by slice size, so one step equals a
single-process step on the whole global batch (BatchNorm layers excepted: they normalise with their rank's slice,
as in ``DistributedDataParallel`` without ``SyncBatchNorm``; :func:`sync_batchnorm` converts them on GPUs). Chunked
evaluation loops share their chunks out and gather the results (:func:`gather_map`), so every rank holds the whole
outputs. Only rank 0 writes the run directory.

Gradients are all-reduced by hand rather than through ``DistributedDataParallel``: the explanation-aware objectives
hook submodules by name and differentiate maps with ``create_graph=True``, which DDP's wrapper and its
backward hooks would have to see through; the hand-written average is what DDP computes, in one place.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")
_gathering = False  # inside a gather_map share: nested calls run locally


def active() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0 (and in every single-process run): the one rank that writes."""
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment): ``nccl`` when
    CUDA is available, ``gloo`` otherwise. Returns whether this process is one of several ranks."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return active()


def shard(batch: Sequence[torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], float]:
    """This rank's contiguous slice of a global batch and its share ``n_rank / n_global`` (1 when not distributed)."""
    if not active():
        return tuple(batch), 1.0
    n, r, w = len(batch[0]), rank(), world_size()
    lo, hi = n * r // w, n * (r + 1) // w
    return tuple(t[lo:hi] for t in batch), (hi - lo) / max(n, 1)


def broadcast_parameters(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (all ranks start from the same weights)."""
    if active():
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t.data, src=0)


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with its BatchNorm layers replaced by :class:`torch.nn.SyncBatchNorm` (same parameters and buffers,
    so state dicts load either way) when several ranks run; unchanged otherwise. In train mode the layers then
    normalise with the statistics of the whole global batch, gathered from every rank, as DDP with SyncBatchNorm
    does; in eval mode they are plain BatchNorm. torch synchronises GPU tensors only (on CPU ranks the forward
    pass raises), which the config key ``distributed.sync_batchnorm`` checks before any work."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if active() else model


def average_gradients(model: nn.Module, share: float) -> None:
    """Replace each parameter's gradient (of this rank's mean loss) by the global-batch mean: the sum over ranks of
    ``share * grad``. Parameters without a gradient on this rank count as zero."""
    if not active():
        return
    params = [p for p in model.parameters() if p.requires_grad]
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)  # a parameter no rank touched keeps grad None, as in one process
    for p, anywhere in zip(params, present.tolist()):
        if not anywhere:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.mul_(share)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def gather_map(compute: Callable[[int], T], n: int) -> list[T]:
    """``[compute(0), ..., compute(n - 1)]`` on every rank, each rank computing one contiguous share of the indices
    (rank r: ``n*r//W`` to ``n*(r+1)//W``) and the shares all-gathered in rank order (``all_gather_object``: works on
    gloo and nccl; the results travel pickled, so return host tensors). Evaluation loops split their chunks this
    way, so W ranks evaluate a test set in about 1/W of the time and every rank ends with the same full outputs.
    Each ``compute(i)`` must depend on ``i`` alone (no shared RNG stream), as the chunked evaluations do; then the
    result equals one process's. Single process, and calls made inside another rank's ``compute`` (whose ranks
    would not meet in the same collective): a plain loop."""
    global _gathering
    if not active() or _gathering:
        return [compute(i) for i in range(n)]
    r, w = rank(), world_size()
    _gathering = True
    try:
        mine = [compute(i) for i in range(n * r // w, n * (r + 1) // w)]
    finally:
        _gathering = False
    shares: list[list[T] | None] = [None] * w
    dist.all_gather_object(shares, mine)
    return [item for share in shares for item in share]


def barrier() -> None:
    if active():
        dist.barrier()
