"""Shared by the paper-architecture benchmarks: one plain and one explanation-aware training step of a model."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from xaisec.backdoor.goals import build_goal, pooled_maps
from xaisec.backdoor.objectives import ExplanationAwareObjective, LossSettings, needs_smooth_activations
from xaisec.backdoor.recipes import get_recipe
from xaisec.maps import normalize
from xaisec.models import build_model
from xaisec.train import training_mode

#: (model name, image size, batch on a GPU): the papers' CIFAR model and two ImageNet-scale ones
PAPER_CASES = [("resnet20", 32, 128), ("resnet50", 224, 32), ("densenet121", 224, 32)]


def synthetic_batch(n: int, size: int, classes: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(x, y, poisoned, source)`` like a poisoned training batch: random images in [0,1], every third poisoned."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen).to(device)
    y = torch.randint(classes, (n,), generator=gen).to(device)
    poisoned = (torch.arange(n) % 3 == 0).to(device)
    return x, y, poisoned, torch.arange(n, device=device)


def training_steps(arch: str, size: int, batch: int, device: torch.device, explainer: str = "gradcam",
                   classes: int = 10, pool: int = 1) -> dict[str, Callable[[], None]]:
    """``{"plain": ..., "xai": ...}``: a cross-entropy step (BatchNorm in train mode) and a step of Fang's targeted
    objective on ``explainer`` maps (``create_graph=True``, Softplus, BatchNorm frozen and folded), as
    :class:`~xaisec.backdoor.objectives.ExplanationAwareObjective` trains. Each call ends synchronised."""
    torch.manual_seed(0)
    model = build_model(arch, (3, size, size), classes).to(device)
    data = synthetic_batch(batch, size, classes, device)
    recipe = get_recipe("fang_targeted")
    beta = 8.0 if needs_smooth_activations(model, [explainer]) else None
    reference = normalize(pooled_maps(model, data[0], data[1], [explainer], pool, softplus_beta=beta)[explainer],
                          "minmax", eps=1e-6)
    objective = ExplanationAwareObjective(recipe, [explainer], {explainer: reference},
                                          {explainer: build_goal(recipe, reference, "minmax")}, pool, LossSettings(),
                                          softplus_beta=beta)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def plain() -> None:
        with training_mode(model):
            loss = F.cross_entropy(model(data[0]), data[1])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sync()

    def xai() -> None:
        with training_mode(model, freeze_batchnorm=True):
            out = objective(model, data)
            opt.zero_grad()
            out.total.backward()
            opt.step()
        sync()

    return {"plain": plain, "xai": xai}
