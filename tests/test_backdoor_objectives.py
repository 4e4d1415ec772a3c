"""Loss building blocks on hand-computed cases, and every recipe's objective lowering its loss on a tiny model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xaisec.backdoor.goals import build_goal, pooled_maps
from xaisec.maps import MapPostprocess
from xaisec.backdoor.objectives import (LOSS_EPS, ExplanationAwareObjective, LossSettings, MapGoal, fang_clean, fang_poisoned,
                                        map_distance, noppel_loss, suppression_loss)
from xaisec.backdoor.poison import poison_training_set
from xaisec.backdoor.recipes import RECIPES, get_recipe
from xaisec.errors import ConfigError
from xaisec.maps import normalize
from xaisec.triggers import build_trigger


def test_fang_equations_4_and_5_exactly():
    lc, ls, lp = torch.tensor([0.5, 2.0]), torch.tensor([0.1, 0.3]), torch.tensor([0.7, 0.0])
    # eq. 4: (beta*Lc + alpha*Ls) / (alpha + beta + 1); eq. 5: (beta*Lc + Lp) / (alpha + beta + 1)
    torch.testing.assert_close(fang_clean(lc, ls, alpha=2.0, beta=3.0), torch.tensor([(1.5 + 0.2) / 6, (6.0 + 0.6) / 6]))
    torch.testing.assert_close(fang_poisoned(lc, lp, alpha=2.0, beta=3.0), torch.tensor([(1.5 + 0.7) / 6, 6.0 / 6]))
    assert fang_clean(torch.tensor(1.0), torch.tensor(1.0), 0.0, 0.0) == 0.0  # beta = alpha = 0: nothing left
    assert fang_poisoned(torch.tensor(1.0), torch.tensor(4.0), 0.0, 0.0) == 4.0  # L_p alone, weight 1


def test_noppel_loss():
    assert noppel_loss(torch.tensor(2.0), torch.tensor(0.5), 0.9).item() == pytest.approx(0.1 * 2.0 + 0.9 * 0.5)
    assert noppel_loss(torch.tensor(2.0), torch.tensor(0.5), 0.0).item() == 2.0


def test_suppression_loss_is_the_mean_square_over_the_mask():
    maps = torch.tensor([[[[0.5, 1.0], [0.0, 0.2]]]])
    mask = torch.tensor([[[[True, True], [False, False]]]])
    assert suppression_loss(maps, mask).item() == pytest.approx((0.25 + 1.0) / 2)  # eq. 3 / k


def test_map_distance_and_the_loss_pipeline():
    a, b = torch.zeros(2, 1, 4, 4), torch.ones(1, 1, 4, 4)
    torch.testing.assert_close(map_distance(a, b, "mse"), torch.ones(2))
    maps = torch.arange(16.0).view(1, 1, 4, 4)
    pooled = MapPostprocess(pool=2, eps=LOSS_EPS)(maps)
    assert pooled.shape == (1, 1, 2, 2) and pooled.min() == 0 and pooled.max() == pytest.approx(1.0)
    assert map_distance(maps, maps.clone(), "dssim").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError):
        LossSettings(lam=1.5)


def test_map_goal_indexing():
    target = torch.rand(5, 1, 3, 3)
    goal = MapGoal("target", target=target)
    maps = torch.rand(2, 1, 3, 3)
    src = torch.tensor([4, 1])
    torch.testing.assert_close(goal.loss(maps, src), (maps - target[src]).pow(2).flatten(1).mean(1))
    shared = MapGoal("target", target=target[:1])
    torch.testing.assert_close(shared.loss(maps, src), (maps - target[:1]).pow(2).flatten(1).mean(1))


def _setup(tiny_cnn, recipe_name, n=48, **overrides):
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=4, batchnorm=True)
    x, y = torch.rand(n, 1, 12, 12), torch.randint(0, 4, (n,))
    recipe = get_recipe(recipe_name)
    import dataclasses
    recipe = dataclasses.replace(recipe, **overrides)
    trigger = build_trigger("patch", size=3)
    data = poison_training_set(x, y, trigger, recipe.poison_rate, recipe.changes_labels, 1, seed=0)
    preserve, goals = {}, {}
    if recipe.explanation_aware:
        raw = pooled_maps(model, x, y, recipe.explainers, 2, softplus_beta=8.0)
        for name, maps in raw.items():
            preserve[name] = normalize(maps, recipe.norm, eps=1e-6)
            goals[name] = build_goal(recipe, normalize(maps, "minmax", eps=1e-6), recipe.norm)
    objective = ExplanationAwareObjective(recipe, recipe.explainers, preserve, goals, 2, LossSettings(alpha=1, beta=1))
    return model, data, objective


@pytest.mark.parametrize("name", RECIPES.names())
def test_every_recipe_lowers_its_loss(name, tiny_cnn):
    explainers = ("gradcam", "vbp") if name == "fang_joint" else get_recipe(name).explainers
    model, data, objective = _setup(tiny_cnn, name, explainers=explainers)
    batch = data.tensors()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = objective(model, batch)
    assert torch.isfinite(first.total) and set(first.parts) >= {"ce"}
    for _ in range(25):
        out = objective(model, batch)
        opt.zero_grad()
        out.total.backward()
        opt.step()
    assert objective(model, batch).total.item() < first.total.item()


def test_objective_matches_a_hand_assembled_fang_loss(tiny_cnn):
    model, data, objective = _setup(tiny_cnn, "fang_targeted")
    x, y, poisoned, source = data.tensors()
    model.eval()
    out = objective(model, (x, y, poisoned, source))
    from xaisec.explainers import explain_all
    from xaisec.models import smooth_activations
    with smooth_activations(model, 8.0):
        joint = explain_all(model, x, y, ["gradcam"], create_graph=True)
    maps = MapPostprocess(pool=2, eps=LOSS_EPS)(joint.maps["gradcam"])
    ce = F.cross_entropy(joint.logits, y, reduction="none")
    ls = (maps - objective.preserve["gradcam"][source]).pow(2).flatten(1).mean(1)
    lp = (maps - objective.goals["gradcam"].target).pow(2).flatten(1).mean(1)
    expected = torch.where(poisoned, (ce + lp) / 3, (ce + ls) / 3).mean()
    torch.testing.assert_close(out.total, expected)
    # the inverted setting swaps the groups
    objective.recipe = get_recipe("fang_inverted")
    inv = objective(model, (x, y, poisoned, source))
    torch.testing.assert_close(inv.total, torch.where(poisoned, (ce + ls) / 3, (ce + lp) / 3).mean())


def test_objective_noppel_and_badnets_parts(tiny_cnn):
    model, data, objective = _setup(tiny_cnn, "noppel_ep")
    x, y, poisoned, source = data.tensors()
    assert (y[poisoned] == 1).all() and poisoned.sum() == len(x) // 2  # a relabelled duplicate of every image
    out = objective(model, data.tensors())
    # at w = w_ref the clean maps equal the cached reference maps (same activations, same post-processing)
    assert out.parts["map_keep"] == pytest.approx(0.0, abs=1e-6)
    model, data, objective = _setup(tiny_cnn, "latka_badnets")
    out = objective(model, data.tensors())
    assert set(out.parts) == {"ce"}
    torch.testing.assert_close(out.total, F.cross_entropy(model(data.x), data.y))


def test_softplus_only_for_gradient_maps(tiny_cnn):
    from xaisec.backdoor.objectives import needs_smooth_activations
    model = tiny_cnn()
    assert needs_smooth_activations(model, ["gradcam"]) and needs_smooth_activations(model, ["simplegrad"])
    assert needs_smooth_activations(model, ["gradshap"]) and needs_smooth_activations(model, ["vbp", "simplegrad"])
    assert not needs_smooth_activations(model, ["vbp"]) and not needs_smooth_activations(model, ["cam"])
