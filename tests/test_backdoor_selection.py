"""Poison selection: random draws and representation-distance (RD) selection (Latka et al.; Xia et al.)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xaisec.backdoor.selection import (budget, candidate_pool, rd_scores, rd_select, random_select,
                                       select_indices)
from xaisec.errors import ConfigError
from xaisec.triggers import build_trigger


class Brightness(nn.Module):
    """Logits (5·mean(x), 0): class 0 grows more likely with brightness. Its parameter is never trained (lr 0)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        m = x.flatten(1).mean(1) * 5 + self.unused
        return torch.stack([m, torch.zeros_like(m)], 1)


@pytest.fixture
def data():
    x = torch.linspace(0.05, 0.9, 24).view(24, 1, 1, 1).expand(24, 1, 4, 4).contiguous()
    y = torch.tensor([0, 1] * 12)
    return x, y


def test_rd_scores_by_hand():
    x = torch.full((2, 1, 4, 4), 0.2)
    x[1] = 0.0
    p0 = torch.sigmoid(torch.tensor([1.0, 0.0]))  # softmax of (5·mean, 0) for class 0
    expected = torch.sqrt(2 * (1 - p0) ** 2)  # ||(p0 - 1, 1 - p0)||
    torch.testing.assert_close(rd_scores(Brightness(), x, target_label=0), expected)


def test_random_select_excludes_target_and_is_seeded(data):
    _, y = data
    idx = random_select(y, 5, target_label=0, seed=3)
    assert len(idx) == 5 and len(set(idx.tolist())) == 5 and (y[idx] != 0).all()
    assert torch.equal(idx, random_select(y, 5, target_label=0, seed=3))
    assert not torch.equal(idx, random_select(y, 5, target_label=0, seed=4))
    with pytest.raises(ConfigError, match="pool holds 12"):
        random_select(y, 13, target_label=0)


def test_rd_select_keeps_the_farthest_images(data):
    x, y = data
    trigger = build_trigger("patch", size=1)
    sel = rd_select(x, y, trigger, 4, 0, Brightness, rounds=30, epochs=1, drop=0.5, lr=0.0, seed=0)
    assert len(sel.indices) == 4 and (y[sel.indices] != 0).all() and len(sel.mean_rd) == 30
    # the darkest non-target images have the highest RD; filtering keeps them once drawn
    darkest = candidate_pool(y, 0)[:2]
    assert set(darkest.tolist()) <= set(sel.indices.tolist())
    assert sel.mean_rd[-1] > sel.mean_rd[0]
    again = rd_select(x, y, trigger, 4, 0, Brightness, rounds=30, epochs=1, drop=0.5, lr=0.0, seed=0)
    assert torch.equal(sel.indices, again.indices)


def test_rd_select_trains_a_real_score_model(data):
    x, y = data
    make = lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 2))  # noqa: E731
    idx = select_indices("rd", x, y, build_trigger("patch", size=1), 3, 0, make, rounds=2, epochs=1, batch_size=8)
    assert len(idx) == 3 and (y[idx] != 0).all()


def test_selection_errors(data):
    x, y = data
    with pytest.raises(ConfigError, match="unknown poison selection"):
        select_indices("best", x, y, build_trigger("patch"), 3, 0)
    with pytest.raises(ConfigError, match="make_model"):
        select_indices("rd", x, y, build_trigger("patch"), 3, 0)
    with pytest.raises(ConfigError, match="drop"):
        rd_select(x, y, build_trigger("patch"), 3, 0, Brightness, drop=1.0)
    assert budget(0.0011, 50000) == 55 and budget(0.0011, 100) == 1


def test_selected_indices_drive_a_full_disguise_objective(tiny_cnn):
    """Selection only chooses indices: a replace-mode set trains with the explanation-aware objective as well."""
    from xaisec.backdoor.goals import build_goal, pooled_maps
    from xaisec.backdoor.objectives import ExplanationAwareObjective, LossSettings
    from xaisec.backdoor.poison import poison_training_set
    from xaisec.backdoor.recipes import get_recipe
    from xaisec.maps import normalize

    torch.manual_seed(0)
    model = tiny_cnn(num_classes=4)
    x, y = torch.rand(32, 1, 12, 12), torch.arange(32) % 4
    recipe = get_recipe("latka_full_disguise")
    idx = random_select(y, 6, target_label=1, seed=0)
    data = poison_training_set(x, y, build_trigger("patch", size=3), 1.0, True, 1, mode="replace", indices=idx)
    raw = pooled_maps(model, x, y, recipe.explainers, 2, softplus_beta=8.0)
    preserve = {n: normalize(m, recipe.norm, eps=1e-6) for n, m in raw.items()}
    goals = {n: build_goal(recipe, normalize(m, "minmax", eps=1e-6), recipe.norm) for n, m in raw.items()}
    objective = ExplanationAwareObjective(recipe, recipe.explainers, preserve, goals, 2, LossSettings())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = objective(model, data.tensors()).total.item()
    for _ in range(15):
        out = objective(model, data.tensors())
        opt.zero_grad()
        out.total.backward()
        opt.step()
    assert objective(model, data.tensors()).total.item() < first
