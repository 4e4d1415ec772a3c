"""Gradient explainers: SimpleGrad, Input x Gradient, Integrated Gradients, SmoothGrad, GradientSHAP."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import DataError
from ..validation import check_choice, check_finite, check_int, check_number, model_logits
from .base import (EXPLAINERS, Explainer, Explanation, PassRequest, PassResult, SinglePassExplainer, reduce_channels,
                   resolve_target, run_pass)


REDUCTIONS = ("max", "sum", "mean")


def _check_baseline(baseline, name: str) -> float | torch.Tensor:
    """A number or a tensor of finite values (NaN in a baseline would make every map NaN)."""
    if isinstance(baseline, torch.Tensor):
        return check_finite(baseline.detach(), name)
    return check_number(baseline, name)


@EXPLAINERS.register()
class SimpleGrad(SinglePassExplainer):
    """|d logit_target / dx| reduced over channels (Simonyan et al. 2014, https://arxiv.org/abs/1312.6034).

    ``reduce``: ``max`` (default, as Fang & Choromanska and ADV2), ``sum`` or ``mean``; ``absolute=False`` keeps the sign.
    """

    name = "simplegrad"
    attackable = True
    #: attacked through Softplus(10) activations: ReLU has no second derivative
    attack_defaults = {"smooth_beta": 10.0}

    def __init__(self, model: nn.Module, reduce: str = "max", absolute: bool = True):
        super().__init__(model)
        self.reduce, self.absolute = check_choice(reduce, "simplegrad reduce", REDUCTIONS), bool(absolute)

    def request(self) -> PassRequest:
        return PassRequest(input_grad=True)

    def maps_from(self, result: PassResult) -> torch.Tensor:
        g = result.input_grad
        return reduce_channels(g.abs() if self.absolute else g, self.reduce)


@EXPLAINERS.register()
class InputXGradient(SinglePassExplainer):
    """x * d logit_target / dx, summed over channels (Shrikumar et al. 2016, https://arxiv.org/abs/1605.01713)."""

    name = "inputxgrad"

    def __init__(self, model: nn.Module, reduce: str = "sum"):
        super().__init__(model)
        self.reduce = check_choice(reduce, "inputxgrad reduce", REDUCTIONS)

    def request(self) -> PassRequest:
        return PassRequest(input_grad=True)

    def maps_from(self, result: PassResult) -> torch.Tensor:
        return reduce_channels(result.x * result.input_grad, self.reduce)


def _batched_gradients(model: nn.Module, points: torch.Tensor, target: torch.Tensor, create_graph: bool,
                       chunk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Input gradients of the target logit at ``points`` (S*B, ...) with targets (S*B,), in chunks of samples."""
    request = PassRequest(input_grad=True)
    if chunk is None or chunk >= len(points):
        r = run_pass(model, points, target, request, create_graph)
        return r.input_grad, r.logits
    parts = [run_pass(model, p, t, request, create_graph) for p, t in zip(points.split(chunk), target.split(chunk))]
    return torch.cat([p.input_grad for p in parts]), torch.cat([p.logits for p in parts])


def _target_for(model: nn.Module, x: torch.Tensor, target, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``x`` and the resolved targets (B,). The logits stay in the graph only with ``create_graph``;
    otherwise this forward records nothing for autograd (path methods need the logits, never their gradient)."""
    with torch.set_grad_enabled(create_graph):
        logits = model_logits(model, x)
    return logits, resolve_target(target, logits)


RIEMANN_OFFSETS = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}


@EXPLAINERS.register()
class IntegratedGradients(Explainer):
    """Integrated Gradients (Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365).

    (x - baseline) * integral of the gradient along the straight path, by Gauss-Legendre quadrature
    (``method="gausslegendre"``, Captum's default), the trapezoid rule or left/middle/right Riemann sums; all ``steps`` points of all
    images in one batched pass (``internal_batch_size`` splits it). Maps are summed over channels.
    """

    name = "ig"

    def __init__(self, model: nn.Module, steps: int = 50, baseline: float | torch.Tensor = 0.0,
                 method: str = "gausslegendre", reduce: str = "sum", internal_batch_size: int | None = None):
        super().__init__(model)
        steps = check_int(steps, "ig steps", low=2, high=100_000)
        if method == "gausslegendre":
            nodes, weights = np.polynomial.legendre.leggauss(steps)
            alphas, step_sizes = 0.5 * (1 + nodes), 0.5 * weights
        elif method == "trapezoid":  # weights sum to 1 (Captum's riemann_trapezoid sums to (n-1)/n)
            alphas = np.linspace(0, 1, steps)
            step_sizes = np.full(steps, 1.0 / (steps - 1))
            step_sizes[[0, -1]] *= 0.5
        elif method in RIEMANN_OFFSETS:
            alphas = (np.arange(steps) + RIEMANN_OFFSETS[method]) / steps
            step_sizes = np.full(steps, 1.0 / steps)
        else:
            raise DataError(f"unknown ig method {method!r}; use 'gausslegendre', 'trapezoid' or one of {list(RIEMANN_OFFSETS)}")
        self.alphas, self.step_sizes = alphas.tolist(), step_sizes.tolist()
        self.baseline = _check_baseline(baseline, "ig baseline")
        self.reduce = check_choice(reduce, "ig reduce", REDUCTIONS)
        self.internal_batch_size = (None if internal_batch_size is None
                                    else check_int(internal_batch_size, "ig internal_batch_size", low=1))

    def _explain(self, x: torch.Tensor, target, create_graph: bool) -> Explanation:
        logits, t = _target_for(self.model, x, target, create_graph)
        base = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
        try:
            base = base.expand_as(x)
        except RuntimeError:
            raise DataError(f"ig baseline of shape {tuple(base.shape)} does not broadcast to the inputs "
                            f"{tuple(x.shape)}; give a number or an image of the input's shape") from None
        alphas = torch.tensor(self.alphas, dtype=x.dtype, device=x.device).view(-1, *([1] * x.dim()))
        points = (base + alphas * (x - base)).reshape(-1, *x.shape[1:])  # (S*B, ...), step-major
        chunk = None if self.internal_batch_size is None else self.internal_batch_size * len(x)
        grads, _ = _batched_gradients(self.model, points, t.repeat(len(self.alphas)), create_graph, chunk)
        weights = torch.tensor(self.step_sizes, dtype=x.dtype, device=x.device).view(-1, *([1] * x.dim()))
        avg_grad = (grads.view(len(self.alphas), *x.shape) * weights).sum(0)
        return Explanation(logits, reduce_channels((x - base) * avg_grad, self.reduce))


def _sample_noise(shape, seed: int, dtype, device) -> torch.Tensor:
    """Standard normal noise from a private generator: the same for every call with the same seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)


@EXPLAINERS.register()
class SmoothGrad(Explainer):
    """SmoothGrad (Smilkov et al. 2017, https://arxiv.org/abs/1706.03825): the average map of a base
    explainer over ``n_samples`` noisy copies, noise std = ``noise`` x (max - min) of each image.

    All noisy copies run as one batch. The noise pattern is drawn once per call from ``seed`` and shared
    by the images of a batch, so batched and per-image results agree.
    """

    name = "smoothgrad"

    def __init__(self, model: nn.Module, base: str | Explainer = "simplegrad", n_samples: int = 16,
                 noise: float = 0.15, seed: int = 0, **base_options):
        super().__init__(model)
        from . import EXPLAINERS

        n_samples = check_int(n_samples, "smoothgrad n_samples", low=1, high=100_000)
        noise, seed = check_number(noise, "smoothgrad noise", low=0), check_int(seed, "smoothgrad seed", low=0)
        self.base = EXPLAINERS.build(base, model, **base_options)
        self.needs_images = self.base.needs_images
        self.n_samples, self.noise, self.seed = n_samples, noise, seed

    def _explain(self, x: torch.Tensor, target, create_graph: bool) -> Explanation:
        logits, t = _target_for(self.model, x, target, create_graph)
        dims = tuple(range(1, x.dim()))
        sigma = self.noise * (x.detach().amax(dims, keepdim=True) - x.detach().amin(dims, keepdim=True))
        eps = _sample_noise((self.n_samples, 1, *x.shape[1:]), self.seed, x.dtype, x.device)
        noisy = (x.unsqueeze(0) + eps * sigma.unsqueeze(0)).reshape(-1, *x.shape[1:])
        maps = self.base._explain(noisy, t.repeat(self.n_samples), create_graph).maps
        return Explanation(logits, maps.view(self.n_samples, len(x), *maps.shape[1:]).mean(0))


def draw_background(x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """``k`` distinct images (or feature vectors) of ``x`` ``(N,...)`` drawn at random (seeded): a GradientSHAP
    background set from the training data, as ADV2 and SHAP's ``GradientExplainer`` use."""
    if not 1 <= k <= len(x):
        raise DataError(f"a background of k={k} images needs 1 <= k <= {len(x)} (the images available)")
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]].clone()


@EXPLAINERS.register()
class GradientShap(Explainer):
    """GradientSHAP / expected gradients (Lundberg & Lee 2017, https://arxiv.org/abs/1705.07874;
    Erion et al. 2021): mean over ``n_samples`` of (x - b) * grad at b + a (x - b), with b drawn from
    ``baselines`` (M,C,H,W) or (M,F) (a background set, e.g. :func:`draw_background` of the training images;
    default: one black image) and a ~ U(0,1).

    All samples run as one batch; draws come from ``seed`` and are shared by the images of a batch.
    Maps are summed over channels.
    """

    name = "gradshap"

    @classmethod
    def options_from_data(cls, x_train: torch.Tensor, seed: int = 0) -> dict:
        """A background set of 64 training images (expected gradients)."""
        return {"baselines": draw_background(x_train, min(64, len(x_train)), seed)}

    def __init__(self, model: nn.Module, baselines: torch.Tensor | None = None, n_samples: int = 32,
                 seed: int = 0, reduce: str = "sum"):
        super().__init__(model)
        if baselines is not None:
            baselines = _check_baseline(baselines, "gradshap baselines")
            if not isinstance(baselines, torch.Tensor) or baselines.dim() < 2 or len(baselines) == 0:
                raise DataError(f"gradshap baselines must be a non-empty (M,C,H,W) tensor of images, got {baselines!r}")
        self.baselines, self.reduce = baselines, check_choice(reduce, "gradshap reduce", REDUCTIONS)
        self.n_samples = check_int(n_samples, "gradshap n_samples", low=1, high=100_000)
        self.seed = check_int(seed, "gradshap seed", low=0)

    def _explain(self, x: torch.Tensor, target, create_graph: bool) -> Explanation:
        base = torch.zeros_like(x[:1]) if self.baselines is None else self.baselines.to(x)
        if base.shape[1:] != x.shape[1:]:
            raise DataError(f"gradshap baselines have shape {tuple(base.shape[1:])} per image, inputs {tuple(x.shape[1:])}")
        logits, t = _target_for(self.model, x, target, create_graph)
        gen = torch.Generator().manual_seed(self.seed)
        which = torch.randint(len(base), (self.n_samples,), generator=gen)
        alphas = torch.rand(self.n_samples, generator=gen, dtype=torch.float64).to(x).view(-1, *([1] * x.dim()))
        b = base[which].unsqueeze(1)  # (S,1,...)
        points = (b + alphas * (x.unsqueeze(0) - b)).reshape(-1, *x.shape[1:])
        grads, _ = _batched_gradients(self.model, points, t.repeat(self.n_samples), create_graph, None)
        attr = ((x.unsqueeze(0) - b) * grads.view(self.n_samples, *x.shape)).mean(0)
        return Explanation(logits, reduce_channels(attr, self.reduce))
