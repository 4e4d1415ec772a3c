"""Property: every public entry point, given random shapes, dtypes, NaN/inf and out-of-range values, returns a
result or raises the package's own :class:`XaisecError`, never another exception, and never a NaN result from
finite input. Few examples on tiny models, so the whole file runs in seconds."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xaisec.defenses import tv_chambolle
from xaisec.errors import XaisecError
from xaisec.evasion import PGD, Adv2PGD, InterpreterTerm, StAdv
from xaisec.explainers import EXPLAINERS
from xaisec.maps import MapPostprocess, distance, normalize, topk_mask

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model(tiny_cnn):
    """One tiny CNN for every example of a property."""
    torch.manual_seed(0)
    return tiny_cnn(num_classes=4)


@st.composite
def tensors(draw, min_dims: int = 1, max_dims: int = 5):
    """Tensors of random rank, small sizes, float/int/bool dtype, values possibly outside [0,1], NaN or inf."""
    shape = draw(st.lists(st.integers(0, 13), min_size=min_dims, max_size=max_dims))
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.float16, torch.int64, torch.bool]))
    kind = draw(st.sampled_from(["unit", "unit", "wide", "nan", "inf"]))
    t = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    if kind == "wide":
        t = 4 * t - 2
    elif kind in ("nan", "inf") and t.numel():
        t.view(-1)[0] = math.nan if kind == "nan" else math.inf
    return t.to(dtype) if dtype != torch.bool else t > 0.5


def images():
    """Mostly image-like (B,1,12,12) tensors, sometimes anything."""
    good = st.integers(1, 3).flatmap(lambda b: st.just(torch.rand(b, 1, 12, 12)))
    return st.one_of(good, good, tensors(), tensors(4, 4))


targets = st.one_of(st.none(), st.integers(-2, 5), st.sampled_from(["1", 1.5, math.nan, True]),
                    st.lists(st.integers(-1, 4), min_size=1, max_size=3).map(torch.tensor))


def outcome(call):
    """Run ``call``; XaisecError is an accepted outcome (returns None), anything else propagates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return call()
        except XaisecError:
            return None


def finite_input(*ts) -> bool:
    return all(not isinstance(t, torch.Tensor) or not t.is_floating_point() or bool(torch.isfinite(t).all()) for t in ts)


@pytest.mark.parametrize("name", [n for n in EXPLAINERS.names() if n != "rts"])
@SETTINGS
@given(x=images(), target=targets)
def test_explainers_return_finite_maps_or_raise_xaisec_errors(name, x, target, model, make_explainer):
    out = outcome(lambda: make_explainer(name, model)(x, target))
    if out is not None:
        assert out.maps.shape[0] == x.shape[0] and torch.isfinite(out.maps).all()


@pytest.mark.parametrize("attack", ["pgd", "pgd_untargeted", "stadv", "adv2_pgd"])
@SETTINGS
@given(x=images(), y=targets, maps=st.one_of(tensors(4, 4), st.just(torch.rand(2, 1, 12, 12))))
def test_attacks_stay_in_the_box_or_raise_xaisec_errors(attack, x, y, maps, model, make_explainer):
    build = {
        "pgd": lambda: PGD(model, eps=0.1, step=0.05, steps=2),
        "pgd_untargeted": lambda: PGD(model, eps=0.1, step=0.05, steps=2, targeted=False),
        "stadv": lambda: StAdv(model, steps=2),
        "adv2_pgd": lambda: Adv2PGD(model, [InterpreterTerm(make_explainer("gradcam", model))], eps=0.1, step=0.05,
                                    steps=2, warmup=1),
    }[attack]
    context = {"target_maps": {"gradcam": maps}} if attack == "adv2_pgd" else {}
    x_adv = outcome(lambda: build()(x, y, **context))
    if x_adv is not None:
        assert x_adv.shape == x.shape and torch.isfinite(x_adv).all() and 0 <= x_adv.min() and x_adv.max() <= 1


@SETTINGS
@given(x=images(), weight=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3)),
       n_iter=st.one_of(st.integers(-1, 3), st.floats(0, 3)))
def test_tv_denoising_returns_images_or_raises_xaisec_errors(x, weight, n_iter):
    out = outcome(lambda: tv_chambolle(x, weight, n_iter))
    if out is not None:
        assert out.shape == x.shape and torch.isfinite(out).all()


@SETTINGS
@given(a=tensors(2, 4), b=tensors(2, 4), how=st.sampled_from(["minmax", "max", "zscore", "none", "bogus"]),
       metric=st.sampled_from(["mse", "l1", "l2", "dssim", "bogus"]),
       k=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 200)), pool=st.integers(-1, 4))
def test_map_metrics_return_finite_values_or_raise_xaisec_errors(a, b, how, metric, k, pool):
    for call in (lambda: normalize(a, how), lambda: distance(a, b, metric), lambda: topk_mask(a, k),
                 lambda: MapPostprocess(pool=pool, norm=how)(a)):
        out = outcome(call)
        if out is not None and out.is_floating_point() and finite_input(a, b):
            assert torch.isfinite(out).all()
