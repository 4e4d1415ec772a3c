"""Batched helpers of the adv2 experiment: running attacks and interpreters over many images, transfer matrices."""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from .. import distributed
from ..explainers import Explainer
from ..maps import MapPostprocess, distance
from ..models import model_device
from ..train import eval_mode, predict
from .metrics import map_metrics, perturbation_metrics, prediction_metrics


def in_batches(fn: Callable[..., torch.Tensor], batch_size: int, *tensors: torch.Tensor,
               device: torch.device | None = None, gathered: bool = False, **kwargs) -> torch.Tensor:
    """``fn`` over aligned chunks of ``tensors`` (dict kwargs of tensors are chunked alongside), concatenated.
    With ``device`` each chunk is moved there (data stays on the host) and each result comes back. ``gathered``:
    under ``torchrun`` each rank runs ``fn`` on a contiguous share of the chunks and every rank gets the whole
    result (:func:`xaisec.distributed.gather_map`; ``fn`` must depend on its chunk alone)."""
    n = len(tensors[0])
    home = tensors[0].device
    move = (lambda t: t) if device is None else (lambda t: t.to(device, non_blocking=True))  # noqa: E731
    starts = range(0, n, batch_size)

    def chunk(i: int) -> torch.Tensor:
        start = starts[i]
        part = [move(t[start:start + batch_size]) for t in tensors]
        kw = {k: ({n_: move(v_[start:start + batch_size]) for n_, v_ in v.items()} if isinstance(v, dict) else v)
              for k, v in kwargs.items()}
        return fn(*part, **kw).to("cpu" if gathered else home)

    outs = distributed.gather_map(chunk, len(starts)) if gathered else [chunk(i) for i in range(len(starts))]
    return torch.cat(outs).to(home)


def explain_batches(explainer: Explainer, x: torch.Tensor, target: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Raw maps (N,1,H,W) of ``explainer`` for classes ``target``, in batches on the model's device, model in eval
    mode; returned where ``x`` is."""
    with eval_mode(explainer.model):
        return in_batches(lambda xb, tb: explainer(xb, tb).maps.detach(), batch_size, x, target,
                          device=model_device(explainer.model))


def logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """:func:`~xaisec.train.predict` in chunks on the model's device; logits (N,K) returned where ``x`` is."""
    return in_batches(lambda xb: predict(model, xb, batch_size), batch_size, x, device=model_device(model))


def attack_report(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y_target: torch.Tensor,
                  maps: Mapping[str, torch.Tensor], benign: Mapping[str, torch.Tensor],
                  targets: Mapping[str, torch.Tensor], posts: Mapping[str, MapPostprocess], ks) -> dict:
    """ASR, confidence, perturbation size and, per interpreter, map metrics vs the benign and the target maps
    (after that interpreter's post-processing ``posts[name]``)."""
    out = {**prediction_metrics(logits(model, x_adv), y_target), **perturbation_metrics(x, x_adv)}
    out["maps"] = {name: {"vs_benign": map_metrics(m, benign[name], posts[name], ks),
                          "vs_target": map_metrics(m, targets[name], posts[name], ks)} for name, m in maps.items()}
    return out


def transfer_matrix(adv_maps: Mapping[str, Mapping[str, torch.Tensor]], reference: Mapping[str, torch.Tensor],
                    posts: Mapping[str, MapPostprocess]) -> dict[str, dict[str, float]]:
    """Table 9: ``{attack aimed at A: {interpreter B: mean L1 between B's maps of A's inputs and B's reference}}``."""
    return {src: {dst: distance(posts[dst](m), posts[dst](reference[dst]), "l1").mean().item() for dst, m in maps.items()}
            for src, maps in adv_maps.items()}
