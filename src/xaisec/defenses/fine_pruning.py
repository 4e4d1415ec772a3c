"""Fine-pruning (Liu, Dolan-Gavitt & Garg, RAID 2018, https://arxiv.org/abs/1805.12185).

Channels of the last convolutional feature map that stay dormant on clean data are the ones a backdoor can
hijack: prune them in increasing order of mean clean activation, watch clean accuracy and the attack metric
(ASR for BadNets, FSR for explanation backdoors) as the pruned fraction grows (Fang & Choromanska, Figure 4b),
then optionally fine-tune the pruned model on clean data.

Pruning is a channel mask applied by a forward hook on a *copy* of the model (the mask is a non-persistent
buffer of the pruned layer, so the copy still saves and loads as the original architecture); the caller's
model is never modified.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, ModelError
from ..explainers.base import recording
from ..models import default_cam_layer, get_layer, model_device
from ..train import TensorBatches, accuracy, cross_entropy, eval_mode, fit
from ..validation import check_images, check_int, check_labels, check_number
from .registry import DEFENSES

log = logging.getLogger(__name__)

#: a metric of a (pruned) model, e.g. ``lambda m: attack_success_rate(m, x_trig, target)``
ModelMetric = Callable[[nn.Module], float]

DEFAULT_FRACTIONS = tuple(i / 20 for i in range(20))  # 0, 5%, ..., 95%


@torch.no_grad()
def channel_activations(model: nn.Module, x: torch.Tensor, layer: str | None = None, batch_size: int = 256) -> torch.Tensor:
    """Mean activation ``(C,)`` of each channel of ``layer`` (default: the CAM layer) over clean images ``x``."""
    check_images(x, "clean images")
    layer = layer or default_cam_layer(model)
    total, device = None, model_device(model)
    with eval_mode(model), recording(model, [layer]) as (outputs, _):
        for xb in x.split(batch_size):
            model(xb.to(device))
            a = outputs[layer]
            if a.dim() != 4:
                raise ModelError(f"fine-pruning needs a convolutional layer with (B,C,h,w) output; {layer!r} gives "
                                 f"{tuple(a.shape)}")
            s = a.sum((0, 2, 3)) / (a.shape[2] * a.shape[3])
            total = s if total is None else total + s
    return total.cpu() / len(x)


def _mask_hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    keep = module.prune_keep
    if output.dim() != 4 or output.shape[1] != len(keep):
        raise ModelError(f"the pruned layer outputs shape {tuple(output.shape)}, but its mask has {len(keep)} channels")
    return output * keep.view(1, -1, 1, 1).to(output)


def layer_channels(model: nn.Module, layer: str) -> int:
    """Output channels of ``layer``: its own or its last Conv2d/BatchNorm2d's (a conv block ends with one)."""
    module = get_layer(model, layer)
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    if not convs:
        raise ModelError(f"layer {layer!r} contains no Conv2d/BatchNorm2d; fine-pruning needs a convolutional layer")
    last = convs[-1]
    return last.out_channels if isinstance(last, nn.Conv2d) else last.num_features


def pruned_copy(model: nn.Module, channels: Sequence[int] | torch.Tensor, layer: str | None = None) -> nn.Module:
    """A deep copy of ``model`` whose ``layer`` outputs zero on ``channels`` (the original is untouched)."""
    layer = layer or default_cam_layer(model)
    n = layer_channels(model, layer)
    channels = torch.as_tensor(channels, dtype=torch.long)
    if channels.numel() and (channels.min() < 0 or channels.max() >= n):
        raise ConfigError(f"layer {layer!r} has {n} channels; cannot prune channel(s) {channels.tolist()}")
    pruned = copy.deepcopy(model)
    module = get_layer(pruned, layer)
    keep = torch.ones(n)
    keep[channels] = 0
    module.register_buffer("prune_keep", keep, persistent=False)
    module.register_forward_hook(_mask_hook)
    return pruned


@dataclass
class PruningCurve:
    """Clean accuracy and attack metrics against the pruned fraction of ``layer``'s channels.

    ``order``: channel indices by increasing mean clean activation (``mean_activation``), pruned in that order;
    ``pruned[i]`` channels are pruned at ``fractions[i]``.
    """

    layer: str
    order: list[int]
    mean_activation: list[float]
    fractions: list[float]
    pruned: list[int]
    clean_accuracy: list[float]
    metrics: dict[str, list[float]] = field(default_factory=dict)
    fine_tuned: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"layer": self.layer, "order": self.order, "mean_activation": self.mean_activation,
                "fractions": self.fractions, "pruned": self.pruned, "clean_accuracy": self.clean_accuracy,
                "metrics": self.metrics, "fine_tuned": self.fine_tuned}

    def fraction_at_accuracy_drop(self, max_drop: float = 0.05) -> float:
        """The largest pruned fraction whose clean accuracy is within ``max_drop`` of the unpruned model's."""
        ok = [f for f, a in zip(self.fractions, self.clean_accuracy) if a >= self.clean_accuracy[0] - max_drop]
        return max(ok) if ok else 0.0


@DEFENSES.register("fine_pruning")
def pruning_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, layer: str | None = None,
                  fractions: Sequence[float] = DEFAULT_FRACTIONS, metrics: dict[str, ModelMetric] | None = None,
                  x_rank: torch.Tensor | None = None, batch_size: int = 256, progress: bool = True) -> PruningCurve:
    """Prune ``layer`` (default: the CAM layer, the last conv block's output) at each of ``fractions``.

    ``x, y``: clean evaluation images/labels; ``x_rank``: clean images for ranking the channels (default ``x``);
    ``metrics``: named callables evaluated on each pruned model (e.g. ASR or FSR on triggered inputs).
    The pruned sets are nested: every channel pruned at one fraction stays pruned at the larger ones.
    """
    check_images(x, "clean images")
    y = check_labels(y, int(y.max()) + 1 if len(y) else 1, "clean labels", batch=len(x))
    fractions = sorted(float(f) for f in fractions)
    if not fractions or fractions[0] < 0 or fractions[-1] >= 1:
        raise ConfigError(f"pruned fractions must lie in [0, 1), got {fractions}")
    layer = layer or default_cam_layer(model)
    mean_act = channel_activations(model, x if x_rank is None else x_rank, layer, batch_size)
    order = torch.argsort(mean_act, stable=True)
    pruned_model = pruned_copy(model, [], layer)
    keep = get_layer(pruned_model, layer).prune_keep
    metrics = metrics or {}
    curve = PruningCurve(layer, order.tolist(), mean_act.tolist(), fractions, [], [], {k: [] for k in metrics})
    for f in tqdm(fractions, desc="fine-pruning", leave=False, disable=None if progress else True):
        n = int(round(f * len(order)))
        keep.fill_(1)
        keep[order[:n]] = 0
        curve.pruned.append(n)
        curve.clean_accuracy.append(accuracy(pruned_model, x, y, batch_size=batch_size))
        for name, metric in metrics.items():
            curve.metrics[name].append(float(metric(pruned_model)))
    return curve


def fine_prune(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, fraction: float, *,
               layer: str | None = None, epochs: int = 2, lr: float = 1e-3, batch_size: int = 128, seed: int = 0,
               progress: bool = True, flush_denormals: bool | None = None) -> nn.Module:
    """Prune ``fraction`` of ``layer``'s channels (lowest mean activation on ``x_train``), then fine-tune the
    pruned copy on the clean ``x_train, y_train`` with :func:`xaisec.train.fit` (Adam, subnormals flushed to zero
    unless ``flush_denormals=False``). ``epochs=0`` only prunes.
    Returns the copy (in the original's train/eval mode); the input model is untouched."""
    check_images(x_train, "clean training images")
    fraction = check_number(fraction, "pruned fraction", low=0, high=1, high_open=True)
    epochs, batch_size = check_int(epochs, "epochs", low=0), check_int(batch_size, "batch_size", low=1)
    lr, seed = check_number(lr, "lr", low=0, low_open=True), check_int(seed, "seed", low=0)
    layer = layer or default_cam_layer(model)
    mean_act = channel_activations(model, x_train, layer, batch_size)
    order = torch.argsort(mean_act, stable=True)
    pruned = pruned_copy(model, order[: int(round(fraction * len(order)))], layer)
    if epochs > 0:
        torch.manual_seed(seed)
        params = [p for p in pruned.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        fit(pruned, TensorBatches(x_train, y_train, batch_size=batch_size, seed=seed), cross_entropy, opt, epochs,
            progress=progress, desc="fine-tune", flush_denormals=flush_denormals)
    return pruned
