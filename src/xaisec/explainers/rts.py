"""RTS: real-time saliency (Dabkowski & Gal 2017, https://arxiv.org/abs/1705.07857).

A small class-conditioned decoder (the "saver") predicts in one forward pass a mask (B,1,H,W) in [0,1] of where
the evidence for a class lies; the RTS map is that mask times the classifier's softmax probability of the class
(:func:`rts_maps`), so a class the classifier does not see gets an empty map. Two savers:

- :class:`FeatureSaliencyNet` (the paper's design, the default of the adv2 experiment): its encoder is the
  explained classifier itself. The decoder reads two of the classifier's feature maps (a deep one and a
  high-resolution one) recorded during the classifier's own forward pass, so the saver shares the classifier's
  features, and their vulnerability, as RTS with its pretrained ResNet encoder does in ADV2's experiments.
- :class:`SaliencyNet`: a saver with its own encoder trained from scratch on the images. On MNIST its masks
  trace the strokes and barely move inside an L-inf ball of 0.2 (ADV2 then gets only slightly closer to a target
  map than PGD, see docs/results_adv2.md): a harder-to-fool variant, kept for comparison.

The saver is trained once per classifier (:mod:`xaisec.explainers.rts_train`) and used as the explainer
``rts``: ``build("rts", model, saver=saver)``. Maps are differentiable w.r.t. the input, which ADV2 exploits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelError
from ..models import Normalize, default_cam_layer, is_activation
from ..train import eval_mode
from .base import EXPLAINERS, Explainer, Explanation, recording, resolve_target


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
        e2, e3 = self._encoder(x)
        scale, shift = self.selector(target)[:, :, None, None].chunk(2, dim=1)
        e3 = F.relu(e3 * (1 + scale) + shift)  # class selector at the bottleneck ...
        skip_scale, skip_shift = self.skip_selector(target)[:, :, None, None].chunk(2, dim=1)
        skip = F.relu(e2 * (1 + skip_scale) + skip_shift)  # ... and on the skip path, so nothing bypasses it
        up = F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False)
        d2 = self.dec2(torch.cat([up, skip], 1))
        return torch.sigmoid(F.interpolate(self.out(d2), size=x.shape[-2:], mode="bilinear", align_corners=False))

    def _encoder(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e1 = self.enc1(self.normalize(x))
        e2 = self.enc2(F.max_pool2d(e1, 2))
        return e2, self.enc3(F.max_pool2d(e2, 2))

    def encode(self, classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output ``(B,4*width)``: its bottleneck features, averaged over space (``classifier``
        unused: this saver has its own encoder)."""
        return self._encoder(x)[1].mean((2, 3))

    def describe(self) -> str:
        return f"own encoder trained on the images (width {self.width})"

    def explain(self, classifier: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(classifier logits (B,K), target (B,), masks (B,1,H,W))``; ``target`` None: the prediction."""
        logits = classifier(x)
        t = resolve_target(target, logits)
        return logits, t, self(x, t)


class FeatureSaliencyNet(nn.Module):
    """The paper's saver: the explained classifier is the encoder. Its ``layers`` = (deep, shallow) outputs,
    recorded in the classifier's forward pass, feed a decoder: the deep features (``channels[0]``) pass a class
    selector (per-class scale and shift) and a conv block, are upsampled to the shallow features' resolution,
    concatenated with the class-selected shallow features (``channels[1]``), and a second block and a 1x1 conv give
    the mask logits, bilinearly upsampled to the input: sigmoid mask (B,1,H,W) in [0,1].

    Build it for a classifier with :meth:`for_classifier`. ``explain(classifier, x, target)`` runs the classifier
    once and returns its logits too. The classifier is not a submodule: saving the saver saves the decoder only.
    """

    def __init__(self, layers: tuple[str, str], channels: tuple[int, int], num_classes: int, width: int = 16):
        super().__init__()
        if len(layers) != 2 or len(channels) != 2 or min(channels) < 1 or num_classes < 2 or width < 1:
            raise ModelError(f"FeatureSaliencyNet needs two layers with >= 1 channels, num_classes >= 2, width >= 1; "
                             f"got layers={layers}, channels={channels}, num_classes={num_classes}, width={width}")
        self.layers, self.channels = (str(layers[0]), str(layers[1])), (int(channels[0]), int(channels[1]))
        self.num_classes, self.width = num_classes, width
        deep, shallow = self.channels
        self.selector = nn.Embedding(num_classes, 2 * deep)
        self.skip_selector = nn.Embedding(num_classes, 2 * shallow)
        nn.init.zeros_(self.selector.weight)
        nn.init.zeros_(self.skip_selector.weight)
        self.dec_deep = _block(deep, 2 * width)
        self.dec = _block(2 * width + shallow, width)
        self.out = nn.Conv2d(width, 1, 1)

    @classmethod
    def for_classifier(cls, classifier: nn.Module, input_shape: tuple[int, ...], num_classes: int, width: int = 16,
                       layers: tuple[str, str] | None = None) -> "FeatureSaliencyNet":
        """A saver for ``classifier`` on (C,H,W) images. Default layers: the CAM layer (deep) and the last
        activation at the highest resolution above the deep layer's (shallow)."""
        param = next(classifier.parameters())
        probe = torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device)
        deep = layers[0] if layers else default_cam_layer(classifier)
        candidates = [] if layers else [n for n, m in classifier.named_modules() if is_activation(m)]
        recorded = list(layers or [deep, *candidates])
        with torch.no_grad(), eval_mode(classifier), recording(classifier, recorded) as (out, _):
            classifier(probe)  # one probe pass: channel counts, and the resolutions the default layers are picked by
        if layers is None:
            area = lambda n: out[n].shape[-2] * out[n].shape[-1] if n in out and out[n].dim() == 4 else 0  # noqa: E731
            finer = [n for n in candidates if area(n) > area(deep)]
            if not finer:
                raise ModelError(f"{type(classifier).__name__} has no activation at a higher resolution than its "
                                 f"CAM layer {deep!r}; give the saver's layers explicitly")
            best = max(area(n) for n in finer)
            layers = (deep, [n for n in finer if area(n) == best][-1])
        if any(out[n].dim() != 4 for n in layers):
            raise ModelError(f"the saver's layers {layers} must output (B,C,h,w) feature maps")
        return cls(layers, (out[layers[0]].shape[1], out[layers[1]].shape[1]), num_classes, width)

    def describe(self) -> str:
        return (f"decoder on the classifier's features: {self.layers[0]} ({self.channels[0]} channels) and "
                f"{self.layers[1]} ({self.channels[1]} channels), width {self.width}")

    def forward(self, deep: torch.Tensor, shallow: torch.Tensor, target: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
        if deep.shape[1] != self.channels[0] or shallow.shape[1] != self.channels[1]:
            raise ModelError(f"the saver takes features with {self.channels} channels from layers {self.layers}, "
                             f"got {deep.shape[1]} and {shallow.shape[1]}: it was built for another classifier")
        scale, shift = self.selector(target)[:, :, None, None].chunk(2, dim=1)
        d = self.dec_deep(F.relu(deep * (1 + scale) + shift))
        skip_scale, skip_shift = self.skip_selector(target)[:, :, None, None].chunk(2, dim=1)
        skip = F.relu(shallow * (1 + skip_scale) + skip_shift)
        d = F.interpolate(d, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        z = self.out(self.dec(torch.cat([d, skip], 1)))
        return torch.sigmoid(F.interpolate(z, size=size, mode="bilinear", align_corners=False))

    def encode(self, classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output ``(B,channels[0])``: the classifier's deep features the saver reads, averaged over
        space."""
        with recording(classifier, [self.layers[0]]) as (out, _):
            classifier(x)
        if self.layers[0] not in out:
            raise ModelError(f"the classifier did not run the saver's layer {self.layers[0]!r}")
        return out[self.layers[0]].mean((2, 3))

    def explain(self, classifier: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(classifier logits (B,K), target (B,), masks (B,1,H,W))`` from one classifier forward pass."""
        with recording(classifier, list(self.layers)) as (out, _):
            logits = classifier(x)
        missing = [n for n in self.layers if n not in out]
        if missing:
            raise ModelError(f"the classifier did not run the saver's layers {missing}: it was built for another one")
        t = resolve_target(target, logits)
        return logits, t, self(out[self.layers[0]], out[self.layers[1]], t, tuple(x.shape[-2:]))


Saver = SaliencyNet | FeatureSaliencyNet


@torch.no_grad()
def encoder_prototypes(saver: Saver, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                       batch_size: int = 256) -> torch.Tensor:
    """``(K,D)``: the mean encoder output (:meth:`~FeatureSaliencyNet.encode`) of the images ``x`` of each class
    ``y`` (zeros for a class without images), enc(c) in ADV2's encoder loss on RTS."""
    with eval_mode(saver), eval_mode(classifier):
        device = next(classifier.parameters()).device
        feats = torch.cat([saver.encode(classifier, chunk.to(device)) for chunk in x.split(batch_size)])
    y = y.to(feats.device)
    sums = torch.zeros(num_classes, feats.shape[1], dtype=feats.dtype, device=feats.device).index_add_(0, y, feats)
    counts = torch.bincount(y, minlength=num_classes).clamp_min(1).to(feats.dtype)
    return sums / counts[:, None]


def rts_maps(saver: Saver, classifier: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits (B,K), target (B,), RTS maps (B,1,H,W) in [0,1])``: the saver's mask for ``target`` (None: the
    classifier's prediction) times the classifier's softmax probability of ``target``."""
    logits, t, masks = saver.explain(classifier, x, target)
    gate = F.softmax(logits, 1).gather(1, t[:, None])[:, :, None, None]
    return logits, t, masks * gate


@EXPLAINERS.register()
class RealTimeSaliency(Explainer):
    """RTS explainer: the trained ``saver`` (:class:`FeatureSaliencyNet` or :class:`SaliencyNet`) asked about the
    target class (default: the classifier's prediction), gated by the classifier (:func:`rts_maps`).
    Maps (B,1,H,W) in [0,1]. The saver's train/eval mode is left as found (eval inside)."""

    name = "rts"
    needs_images = True
    attackable = True
    #: the maps are masks in [0,1]: compared as they are (min-max scaling blows a near-empty mask up into noise)
    attack_defaults = {"norm": "none"}

    @classmethod
    def attack_term_type(cls) -> type:
        """:class:`~xaisec.evasion.objective.RTSTerm`: the map term, plus ADV2's encoder loss when it has a weight."""
        from ..evasion.objective import RTSTerm

        return RTSTerm
    requires = ("saver",)
    #: the parameter-gradient check of the test suite builds explainers without a saver
    differentiable = False

    def __init__(self, model: nn.Module, saver: Saver | None = None):
        super().__init__(model)
        if not isinstance(saver, (SaliencyNet, FeatureSaliencyNet)):
            raise ConfigError("the rts explainer needs a trained saliency model: build('rts', model, saver=saver) with a "
                              "FeatureSaliencyNet or SaliencyNet trained by xaisec.explainers.rts_train.train_rts "
                              "(or loaded with load_saver)")
        head = getattr(model, "head", None)
        if isinstance(head, nn.Linear) and head.out_features != saver.num_classes:
            raise ModelError(f"the saver knows {saver.num_classes} classes but the classifier has {head.out_features}")
        self.saver = saver

    def _explain(self, x: torch.Tensor, target, create_graph: bool) -> Explanation:
        with eval_mode(self.saver), torch.set_grad_enabled(create_graph or torch.is_grad_enabled()):
            logits, _, maps = rts_maps(self.saver, self.model, x, target)
        return Explanation(logits, maps)
