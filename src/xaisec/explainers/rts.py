"""RTS: real-time saliency (Dabkowski & Gal 2017, https://arxiv.org/abs/1705.07857).

A small class-conditioned encoder-decoder (:class:`SaliencyNet`, the "saver") predicts in one forward pass a
mask (B,1,H,W) in [0,1] of where the evidence for a class lies; the RTS map is that mask times the classifier's
softmax probability of the class (:func:`rts_maps`). The gate plays the part of Dabkowski & Gal's encoder, which
is the explained classifier's own pretrained network: a class the classifier does not see gets an empty map.
The saver is trained once per classifier (:mod:`xaisec.explainers.rts_train`) and used as the explainer
``rts``: ``build("rts", model, saver=saver)``. Maps are differentiable w.r.t. the input, which ADV2 exploits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelError
from ..models import Normalize
from ..train import eval_mode
from .base import Explainer, Explanation, resolve_target


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())


class SaliencyNet(nn.Module):
    """Encoder (3 stages, /4) -> class selector (a learned per-class scale and shift, FiLM-style, of the bottleneck
    and of the skip features) -> decoder -> sigmoid mask at H/2, bilinearly upsampled to (B,1,H,W) in [0,1].

    ``forward(x (B,C,H,W) in [0,1], target (B,) long) -> masks (B,1,H,W)`` (not yet gated, see :func:`rts_maps`).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, mean: float = 0.5, std: float = 0.5):
        super().__init__()
        if in_channels < 1 or num_classes < 2 or width < 1:
            raise ModelError(f"SaliencyNet needs in_channels >= 1, num_classes >= 2, width >= 1; got "
                             f"{in_channels}, {num_classes}, {width}")
        self.in_channels, self.num_classes, self.width = in_channels, num_classes, width
        self.normalize = Normalize([mean] * in_channels, [std] * in_channels)
        self.enc1, self.enc2, self.enc3 = _block(in_channels, width), _block(width, 2 * width), _block(2 * width, 4 * width)
        self.selector = nn.Embedding(num_classes, 8 * width)  # scale and shift of the bottleneck (4w channels)
        self.skip_selector = nn.Embedding(num_classes, 4 * width)  # ... and of the skip features (2w channels)
        nn.init.zeros_(self.selector.weight)
        nn.init.zeros_(self.skip_selector.weight)
        self.dec2 = _block(4 * width + 2 * width, 2 * width)
        self.out = nn.Conv2d(2 * width, 1, 1)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ModelError(f"the RTS saver takes (B,{self.in_channels},H,W) images, got {tuple(x.shape)}")
        e1 = self.enc1(self.normalize(x))
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        scale, shift = self.selector(target)[:, :, None, None].chunk(2, dim=1)
        e3 = F.relu(e3 * (1 + scale) + shift)  # class selector at the bottleneck ...
        skip_scale, skip_shift = self.skip_selector(target)[:, :, None, None].chunk(2, dim=1)
        skip = F.relu(e2 * (1 + skip_scale) + skip_shift)  # ... and on the skip path, so nothing bypasses it
        up = F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False)
        d2 = self.dec2(torch.cat([up, skip], 1))
        return torch.sigmoid(F.interpolate(self.out(d2), size=x.shape[-2:], mode="bilinear", align_corners=False))


def rts_maps(saver: SaliencyNet, logits: torch.Tensor, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RTS maps (B,1,H,W) in [0,1]: the saver's mask for ``target`` times the classifier's softmax of ``target``
    (``logits`` (B,K) of the classifier on ``x``)."""
    gate = F.softmax(logits, 1).gather(1, target[:, None])[:, :, None, None]
    return saver(x, target) * gate


class RealTimeSaliency(Explainer):
    """RTS explainer: the trained ``saver`` (:class:`SaliencyNet`) asked about the target class (default: the
    classifier's prediction), gated by the classifier (:func:`rts_maps`). Maps (B,1,H,W) in [0,1]. The saver's
    train/eval mode is left as found (eval inside)."""

    name = "rts"
    needs_images = True
    #: the parameter-gradient check of the test suite builds explainers without a saver
    differentiable = False

    def __init__(self, model: nn.Module, saver: SaliencyNet | None = None):
        super().__init__(model)
        if not isinstance(saver, SaliencyNet):
            raise ConfigError("the rts explainer needs a trained saliency model: build('rts', model, saver=saver) with a "
                              "SaliencyNet from xaisec.explainers.rts_train.train_rts (or loaded with load_saver)")
        head = getattr(model, "head", None)
        if isinstance(head, nn.Linear) and head.out_features != saver.num_classes:
            raise ModelError(f"the saver knows {saver.num_classes} classes but the classifier has {head.out_features}")
        self.saver = saver

    def _explain(self, x: torch.Tensor, target, create_graph: bool) -> Explanation:
        with torch.enable_grad():
            logits = self.model(x)
        t = resolve_target(target, logits)
        with eval_mode(self.saver), torch.set_grad_enabled(create_graph or torch.is_grad_enabled()):
            maps = rts_maps(self.saver, logits, x, t)
        return Explanation(logits, maps)
