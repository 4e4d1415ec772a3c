"""Training the RTS saver (Dabkowski & Gal 2017, https://arxiv.org/abs/1705.07857), plain or adversarially.

Objective per image, for the class ``c`` it is asked about, with ``alt`` an alternative image (the blurred
image; ``alternatives="mix"`` draws per image the blur, a constant random colour or uniform noise, as the paper):

    preserve * -log p_c(blend(x, alt, m)) + destroy * p_c(blend(x, alt, 1 - m))
    + area * (mean m)^area_power + smooth * TV(m)

where ``m`` is the RTS map (the saver's mask gated by the classifier's probability of ``c``, see
:func:`~xaisec.explainers.rts.rts_maps`). For a fraction ``fake_fraction`` of the images the saver is asked
about a wrong class and only the area and smoothness terms apply (the paper's fake labels). The classifier is
frozen.

Adversarial training (the defense of Zhang et al. 2020, Sec. 7, "RTS^A"): each batch is also perturbed by a
few PGD steps inside an L-inf ball that *maximise* the change of the saver's maps; ``adv_weight * L1`` between
the perturbed and the (detached) clean maps is added, so the maps become stable under small perturbations.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelError
from ..io import load_weights, save_weights
from ..train import LossOutput, TensorBatches, eval_mode, fit
from .ops import blend, gaussian_blur, total_variation
from .rts import FeatureSaliencyNet, SaliencyNet, Saver, rts_maps


@dataclass(frozen=True)
class RTSObjective:
    """Weights of the saver's training objective; ``adv_*`` switch on adversarial training (``adv_weight`` > 0)."""

    preserve: float = 1.0
    destroy: float = 1.0
    area: float = 4.0
    #: the paper's 0.3 made masks collapse to empty ones on small images (the gradient of mean^0.3 explodes
    #: near 0); a linear area penalty trains stably
    area_power: float = 1.0
    smooth: float = 0.5
    blur_sigma: float = 3.0
    alternatives: str = "blur"
    fake_fraction: float = 0.3
    adv_weight: float = 0.0
    adv_eps: float = 0.1
    adv_steps: int = 3

    def __post_init__(self) -> None:
        if not 0 <= self.fake_fraction < 1:
            raise ConfigError(f"rts fake_fraction must be in [0, 1), got {self.fake_fraction}")
        if min(self.preserve, self.destroy, self.area, self.smooth, self.adv_weight, self.adv_eps) < 0:
            raise ConfigError("rts objective weights must be non-negative")
        if self.alternatives not in ("mix", "blur"):
            raise ConfigError(f"rts alternatives must be 'mix' or 'blur', got {self.alternatives!r}")
        if self.blur_sigma <= 0 or self.area_power <= 0 or self.adv_steps < 0:
            raise ConfigError("rts needs blur_sigma > 0, area_power > 0 and adv_steps >= 0")


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter inside the block; both restored after."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    with eval_mode(module):
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield module
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def _map_attack(saver: Saver, classifier: nn.Module, x: torch.Tensor, t: torch.Tensor, clean: torch.Tensor,
                eps: float, steps: int, gen: torch.Generator) -> torch.Tensor:
    """PGD (random start, sign steps of eps/2) maximising the L1 change of the saver's maps; detached result."""
    x_adv = (x + eps * (2 * torch.rand(x.shape, generator=gen, dtype=x.dtype) - 1).to(x.device)).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        gap = (rts_maps(saver, classifier, x_adv, t)[2] - clean).abs().sum()
        (g,) = torch.autograd.grad(gap, x_adv)
        x_adv = torch.min(torch.max(x_adv + 0.5 * eps * g.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def alternative_images(x: torch.Tensor, weights: RTSObjective, gen: torch.Generator) -> torch.Tensor:
    """What masked-out pixels are replaced with: blurred ``x``, or (``mix``) per image at random the blur, a
    constant random colour or uniform noise (Dabkowski & Gal, Sec. 4)."""
    blurred = gaussian_blur(x, weights.blur_sigma)
    if weights.alternatives == "blur":
        return blurred
    b, c = x.shape[:2]
    kind = torch.randint(0, 3, (b, 1, 1, 1), generator=gen).to(x.device)
    colour = torch.rand((b, c, 1, 1), generator=gen, dtype=x.dtype).to(x.device).expand_as(x)
    noise = torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    return torch.where(kind == 0, blurred, torch.where(kind == 1, colour, noise))


def rts_loss(saver: Saver, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, weights: RTSObjective,
             generator: torch.Generator | None = None) -> LossOutput:
    """The saver's objective on a batch ``x`` (B,C,H,W) in [0,1] with true labels ``y`` (B,)."""
    gen = generator or torch.Generator().manual_seed(0)
    fake = torch.rand(len(y), generator=gen) < weights.fake_fraction
    shift = torch.randint(1, saver.num_classes, (len(y),), generator=gen)
    t = torch.where(fake, (y.cpu() + shift) % saver.num_classes, y.cpu()).to(y.device)
    fake = fake.to(x.device)
    masks = rts_maps(saver, classifier, x, t)[2]
    alt = alternative_images(x, weights, gen)
    log_keep = F.log_softmax(classifier(blend(x, alt, masks)), 1).gather(1, t[:, None])[:, 0]
    p_destroyed = F.softmax(classifier(blend(x, alt, 1 - masks)), 1).gather(1, t[:, None])[:, 0]
    area = (masks.flatten(1).mean(1) + 1e-4).pow(weights.area_power)
    smooth = total_variation(masks, 2.0)
    real = weights.preserve * -log_keep + weights.destroy * p_destroyed
    per_image = torch.where(fake, torch.zeros_like(real), real) + weights.area * area + weights.smooth * smooth
    parts = {"preserve": (-log_keep[~fake]).mean().item() if (~fake).any() else 0.0,
             "destroy": p_destroyed[~fake].mean().item() if (~fake).any() else 0.0,
             "area": masks.mean().item()}
    total = per_image.mean()
    if weights.adv_weight > 0 and weights.adv_steps > 0:
        x_adv = _map_attack(saver, classifier, x, t, masks.detach(), weights.adv_eps, weights.adv_steps, gen)
        stability = (rts_maps(saver, classifier, x_adv, t)[2] - masks.detach()).abs().flatten(1).mean(1).mean()
        total = total + weights.adv_weight * stability
        parts["stability"] = stability.item()
    return LossOutput(total, parts)


def train_rts(saver: Saver, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 10,
              lr: float = 1e-3, batch_size: int = 64, weights: RTSObjective = RTSObjective(), seed: int = 0,
              progress: bool = True, flush_denormals: bool | None = None) -> list[dict[str, float]]:
    """Train ``saver`` in place to explain the frozen ``classifier`` on ``x`` (N,C,H,W) in [0,1], ``y`` (N,);
    ``flush_denormals``: see :func:`xaisec.train.fit`."""
    if int(y.max().item()) >= saver.num_classes:
        raise ModelError(f"labels go up to {int(y.max())} but the saver knows {saver.num_classes} classes")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(saver.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    with frozen(classifier):
        return fit(saver, TensorBatches(x, y, batch_size=batch_size, seed=seed),
                   lambda s, batch: rts_loss(s, classifier, batch[0], batch[1], weights, gen),
                   opt, epochs, scheduler=sched, progress=progress, desc="rts-adv" if weights.adv_weight else "rts",
                   flush_denormals=flush_denormals)


def saver_spec(saver: Saver) -> dict[str, str]:
    """The architecture of ``saver`` as strings (safetensors metadata); :func:`saver_from_spec` rebuilds it."""
    spec = {"num_classes": str(saver.num_classes), "width": str(saver.width)}
    if isinstance(saver, FeatureSaliencyNet):
        spec.update(encoder="classifier", layers=",".join(saver.layers), channels=",".join(map(str, saver.channels)))
    else:
        spec.update(encoder="own", in_channels=str(saver.in_channels))
    return spec


def saver_from_spec(spec: dict[str, str], where: str = "saver") -> Saver:
    """An untrained saver of the architecture ``spec`` (from :func:`saver_spec`); bad specs raise ModelError."""
    try:
        if spec.get("encoder") == "classifier":
            layers = tuple(spec["layers"].split(","))
            channels = tuple(int(c) for c in spec["channels"].split(","))
            return FeatureSaliencyNet(layers, channels, int(spec["num_classes"]), int(spec["width"]))
        return SaliencyNet(int(spec["in_channels"]), int(spec["num_classes"]), int(spec["width"]))
    except (KeyError, ValueError) as exc:
        raise ModelError(f"{where} has no valid saver metadata ({exc}); save it with save_saver") from exc


def save_saver(saver: Saver, path: str | Path) -> Path:
    """Save the saver as safetensors with its architecture in the metadata (see :func:`load_saver`)."""
    return save_weights(saver, path, metadata=saver_spec(saver))


def load_saver(path: str | Path) -> Saver:
    """Rebuild a saver saved by :func:`save_saver` (safetensors only); returned in eval mode."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"saver weights {path} do not exist; train one with train_rts (or the adv2 experiment)")
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    return load_weights(saver_from_spec(meta, str(path)), path).eval()
