"""ADV2 details: a GradientSHAP background drawn from the training data, and RTS with the encoder loss."""
from __future__ import annotations

import pytest
import torch

from xaisec.errors import ConfigError, DataError
from xaisec.evasion import AttackObjective, RTSTerm
from xaisec.explainers import FeatureSaliencyNet, SaliencyNet, build, draw_background, encoder_prototypes
from xaisec.maps import MapPostprocess


def test_draw_background_is_seeded_and_distinct():
    x = torch.arange(20.0).view(20, 1, 1, 1).expand(20, 1, 2, 2) / 20
    bg = draw_background(x, 5, seed=1)
    assert bg.shape == (5, 1, 2, 2) and len(set(bg[:, 0, 0, 0].tolist())) == 5
    assert torch.equal(bg, draw_background(x, 5, seed=1)) and not torch.equal(bg, draw_background(x, 5, seed=2))
    with pytest.raises(DataError, match="k=21"):
        draw_background(x, 21)


def test_gradshap_background_changes_the_maps(cnn):
    torch.manual_seed(0)
    x_train, x = torch.rand(30, 1, 12, 12), torch.rand(3, 1, 12, 12)
    black = build("gradshap", cnn, n_samples=8)(x, 0).maps
    data = build("gradshap", cnn, baselines=draw_background(x_train, 10), n_samples=8)(x, 0).maps
    assert data.shape == black.shape == (3, 1, 12, 12) and not torch.allclose(data, black)
    with pytest.raises(DataError, match="baselines"):
        build("gradshap", cnn, baselines=torch.rand(12))


@pytest.mark.parametrize("kind", ["feature", "own"])
def test_rts_encoder_loss(kind, tiny_cnn):
    torch.manual_seed(0)
    model = tiny_cnn()
    saver = (FeatureSaliencyNet.for_classifier(model, (1, 12, 12), 4, width=4) if kind == "feature"
             else SaliencyNet(1, 4, width=4)).eval()
    x_train, y_train = torch.rand(16, 1, 12, 12), torch.arange(16) % 4
    protos = encoder_prototypes(saver, model, x_train, y_train, 4)
    feats = saver.encode(model, x_train)
    torch.testing.assert_close(protos[1], feats[y_train == 1].mean(0))
    explainer = build("rts", model, saver=saver)
    plain = RTSTerm(explainer)
    term = RTSTerm(explainer, encoder_weight=2.0, prototypes=protos)
    x, y_t = x_train[:3].clone().requires_grad_(True), torch.tensor([1, 2, 3])
    target = torch.rand(3, 1, 12, 12)
    _, base = plain.loss(x, y_t, MapPostprocess()(target))
    _, total = term.loss(x, y_t, MapPostprocess()(target))
    expected = base + 2.0 * (saver.encode(model, x) - protos[y_t]).pow(2).mean(1)
    torch.testing.assert_close(total, expected)
    grad, = torch.autograd.grad(total.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    objective = AttackObjective(model, [term])  # usable as an attack's interpreter term
    objective.prepare(x.detach(), y_t, target_maps={"rts": target})
    assert objective(x.detach(), y_t, c=1.0).interp.shape == (3,)


def test_rts_term_errors(cnn):
    with pytest.raises(ConfigError, match="'rts' explainer"):
        RTSTerm(build("simplegrad", cnn))
    explainer = build("rts", cnn, saver=SaliencyNet(1, 4, width=4))
    with pytest.raises(ConfigError, match="prototypes"):
        RTSTerm(explainer, encoder_weight=1.0)
