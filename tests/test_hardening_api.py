"""Bad input to the Python API ends in the package's own error, naming the argument; nothing is silently wrong.

One test per class of bad input (non-finite or out-of-range numbers, wrong types, silent no-ops), each
parametrised over the entry points it concerns.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from xaisec.defenses import STRIPDetector, fine_prune, neural_cleanse, spectral_signatures, tv_chambolle
from xaisec.defenses.neural_cleanse import PartialAnalysisWarning
from xaisec.defenses.transforms import build_transform
from xaisec.errors import ConfigError, DataError, XaisecError
from xaisec.evasion import PGD, Adv2PGD, AttackObjective, InterpreterTerm, RampSchedule, StAdv
from xaisec.explainers import EXPLAINERS, build, explain_all
from xaisec.maps import MapPostprocess, distance, normalize, ssim, topk_mask
from xaisec.target_maps import check_target, fixed_target, target_maps
from xaisec.train import batchnorm_stats_kept
from xaisec.validation import DtypeCastWarning, check_choice, check_int, check_number

BAD_NUMBERS = [math.nan, math.inf, -math.inf, "0.1", True, None, torch.tensor([0.1, 0.2])]

X = torch.rand(4, 1, 12, 12)
Y = torch.tensor([0, 1, 2, 3])

# (entry point, argument named in the message): each is called with one bad value of one numeric option
NUMERIC_OPTIONS = {
    "ig baseline": lambda m, v: build("ig", m, baseline=v),
    "ig steps": lambda m, v: build("ig", m, steps=v),
    "smoothgrad noise": lambda m, v: build("smoothgrad", m, noise=v),
    "smoothgrad n_samples": lambda m, v: build("smoothgrad", m, n_samples=v),
    "gradshap n_samples": lambda m, v: build("gradshap", m, n_samples=v),
    "mask lr": lambda m, v: build("mask", m, lr=v),
    "mask tv_beta": lambda m, v: build("mask", m, tv_beta=v),
    "PGD eps": lambda m, v: PGD(m, eps=v),
    "PGD step": lambda m, v: PGD(m, step=v),
    "attack steps": lambda m, v: PGD(m, steps=v),
    "StAdv lr": lambda m, v: StAdv(m, lr=v),
    "StAdv tau": lambda m, v: StAdv(m, tau=v),
    "label_smoothing": lambda m, v: AttackObjective(m, label_smoothing=v),
    "c": lambda m, v: RampSchedule(1, 5, v),
    "interpreter weight": lambda m, v: InterpreterTerm(build("gradcam", m), weight=v),
    "TV weight": lambda m, v: tv_chambolle(X, weight=v),
    "n_iter": lambda m, v: tv_chambolle(X, n_iter=v),
    "lr": lambda m, v: neural_cleanse(m, X, lr=v, epochs=1, progress=False),
    "STRIP alpha": lambda m, v: STRIPDetector(m, alpha=v),
    "pruned fraction": lambda m, v: fine_prune(m, X, Y, v, epochs=0, progress=False),
    "expected_poison_fraction": lambda m, v: spectral_signatures(torch.rand(8, 3), torch.zeros(8, dtype=torch.long), v),
    "blur transform strength": lambda m, v: build_transform("blur", v),
    "top-k k": lambda m, v: topk_mask(torch.rand(2, 1, 4, 4), v),
    "eps": lambda m, v: normalize(torch.rand(2, 1, 4, 4), "minmax", eps=v),
    "ssim sigma": lambda m, v: ssim(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), sigma=v),
    "target map option k": lambda m, v: check_target("topk", {"k": v}),
    "random target cells": lambda m, v: fixed_target("random", (8, 8), {"cells": v}),
}


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize("argument", sorted(NUMERIC_OPTIONS))
def test_non_finite_or_mistyped_numbers_are_refused_where_they_enter(argument, value, tiny_cnn):
    if value is None and argument in ("blur transform strength",) or isinstance(value, torch.Tensor) and argument == "ig baseline":
        pytest.skip("None is the default strength; a tensor baseline is an image, checked against x when explaining")
    with pytest.raises(XaisecError, match=argument.split()[-1]) as info:
        NUMERIC_OPTIONS[argument](tiny_cnn(), value)
    if isinstance(value, float):
        assert repr(value) in str(info.value) or str(value) in str(info.value)  # the message names the value


@pytest.mark.parametrize("value,ok", [(3, True), (np.int64(3), True), (torch.tensor(3), True), (3.0, False),
                                      (2.5, False), (math.nan, False), ("3", False), (True, False), (0, False)])
def test_check_int_accepts_only_integers_in_range(value, ok):
    if ok:
        assert check_int(value, "steps", low=1) == 3
    else:
        with pytest.raises(ConfigError, match=r"steps must be an int >= 1"):
            check_int(value, "steps", low=1)


def test_check_number_and_choice_messages_say_what_is_accepted():
    assert check_number(np.float32(0.5), "alpha", low=0, high=1) == 0.5
    with pytest.raises(ConfigError, match=r"alpha must be a number in \(0, 1\), got 1"):
        check_number(1, "alpha", low=0, high=1, low_open=True, high_open=True)
    with pytest.raises(ConfigError, match=r"reduce must be one of \['max', 'sum'\], got \['max'\]"):
        check_choice(["max"], "reduce", ("max", "sum"))


def test_nan_baseline_tensors_are_refused(tiny_cnn):
    with pytest.raises(DataError, match="gradshap baselines holds 1 NaN"):
        build("gradshap", tiny_cnn(), baselines=torch.full((1, 1, 12, 12), 0.5).index_put_((torch.tensor([0]),) * 4, torch.tensor(math.nan)))
    with pytest.raises(DataError, match="ig baseline"):
        build("ig", tiny_cnn(), baseline=torch.full((1, 1, 12, 12), math.inf))


@pytest.mark.parametrize("target", ["3", b"3", 1.0, [0.5, 1.5, 2.0, 0.0], True, object()], ids=repr)
@pytest.mark.parametrize("name", ["gradcam", "simplegrad", "ig"])
def test_targets_that_are_not_class_indices_are_refused(name, target, make_explainer, tiny_cnn):
    with pytest.raises(DataError, match="target"):
        make_explainer(name, tiny_cnn())(X, target)


@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_float64_images_are_cast_to_the_model_dtype_with_a_warning(name, make_explainer, tiny_cnn):
    explainer = make_explainer(name, tiny_cnn())
    with pytest.warns(DtypeCastWarning, match="float64"):
        out = explainer(X.double(), Y)
    assert out.maps.dtype == torch.float32 and torch.isfinite(out.maps).all()
    torch.testing.assert_close(out.maps, explainer(X, Y).maps)


def test_attacks_cast_float64_images_and_refuse_string_labels(tiny_cnn):
    model = tiny_cnn()
    with pytest.warns(DtypeCastWarning):
        x_adv = PGD(model, eps=0.1, step=0.05, steps=2, targeted=False)(X.double(), Y)
    assert x_adv.dtype == torch.float32
    with pytest.raises(DataError, match="y_target"):
        PGD(model, steps=1)(X, "0123")


@pytest.mark.parametrize("name", EXPLAINERS.names())
def test_explaining_a_train_mode_batchnorm_model_leaves_its_statistics(name, make_explainer, tiny_cnn):
    model = tiny_cnn(batchnorm=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    make_explainer(name, model)(X, Y)
    explain_all(model, X, Y, [name] if name != "rts" else ["gradcam"])
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_training_objectives_still_update_batchnorm_statistics(tiny_cnn):
    model = tiny_cnn(batchnorm=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    explain_all(model, X, Y, ["simplegrad"], create_graph=True, keep_batchnorm_stats=False)
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in before.items())
    with batchnorm_stats_kept(model):
        model(X)
    after = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    model(X)  # outside the block the statistics move again
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in after.items())


def test_untargeted_pgd_moves_away_from_the_true_class(quadrant_model):
    model, x, y = quadrant_model
    x, y = x[:16], y[:16]
    x_adv = PGD(model, eps=0.3, step=0.05, steps=20, targeted=False)(x, y)
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6
    clean_acc = (model(x).argmax(1) == y).float().mean()
    adv_acc = (model(x_adv).argmax(1) == y).float().mean()
    assert adv_acc < clean_acc - 0.3


def test_targeted_pgd_called_with_true_labels_warns_instead_of_doing_nothing_silently(quadrant_model):
    model, x, _ = quadrant_model
    predicted = model(x[:8]).argmax(1)
    with pytest.warns(UserWarning, match="targeted=False"):
        PGD(model, eps=0.1, step=0.05, steps=2)(x[:8], predicted)
    with pytest.raises(ConfigError, match="contradicts"):
        PGD(model, AttackObjective(model), targeted=False)
    with pytest.raises(ConfigError, match="targeted"):
        AttackObjective(model, [InterpreterTerm(build("gradcam", model))], targeted=False)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_adv2_refuses_non_finite_target_maps(bad, tiny_cnn):
    model = tiny_cnn()
    maps = torch.rand(4, 1, 12, 12)
    maps[0, 0, 0, 0] = bad
    attack = Adv2PGD(model, [InterpreterTerm(build("gradcam", model))], eps=0.1, step=0.02, steps=3, warmup=1)
    with pytest.raises(DataError, match="target maps for 'gradcam' holds 1 NaN or inf"):
        attack(X, Y, target_maps={"gradcam": maps})


def test_neural_cleanse_on_fewer_classes_than_the_model_says_so(tiny_cnn):
    model = tiny_cnn(num_classes=4)
    with pytest.warns(PartialAnalysisWarning, match="only classes 0..2 of the model's 4"):
        r = neural_cleanse(model, X, 3, epochs=1, batch_size=4, progress=False)
    assert r.partial and r.model_classes == 4 and len(r.masks) == 3
    assert r.to_dict()["partial"] and r.to_dict()["classes_analysed"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", PartialAnalysisWarning)
        full = neural_cleanse(model, X, epochs=1, batch_size=4, progress=False)
    assert not full.partial
    with pytest.raises(ConfigError, match=r"num_classes must be an int in \[2, 4\], got 10"):
        neural_cleanse(model, X, 10, epochs=1, progress=False)


def test_map_functions_refuse_non_finite_maps():
    maps = torch.rand(2, 1, 4, 4)
    maps[1, 0, 2, 2] = math.nan
    for call in (lambda: normalize(maps), lambda: distance(maps, torch.rand(2, 1, 4, 4)),
                 lambda: MapPostprocess()(maps), lambda: topk_mask(maps, 0.25),
                 lambda: target_maps("inverted", (4, 4), reference=maps)):
        with pytest.raises(DataError, match="NaN or inf"):
            call()
    with pytest.raises(ConfigError, match="whole number"):
        topk_mask(torch.rand(2, 1, 4, 4), 2.5)
