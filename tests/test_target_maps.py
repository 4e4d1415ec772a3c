"""Target maps: shapes, value ranges, the l/7 border frame, derived targets and option checks."""
from __future__ import annotations

import pytest
import torch

from xaisec.errors import ConfigError
from xaisec.target_maps import FIXED_TARGETS, check_target, derived_target, fixed_target, target_maps


@pytest.mark.parametrize("name", FIXED_TARGETS.names())
@pytest.mark.parametrize("size", [(14, 14), (7, 9), (32, 32)])
def test_fixed_shapes_and_range(name, size):
    m = fixed_target(name, size)
    assert m.shape == (1, 1, *size) and m.dtype == torch.float32
    assert 0 <= m.min() and m.max() <= 1
    assert 0 < m.mean() < 1  # neither empty nor full


def test_border_is_a_frame_of_width_side_over_seven():
    m = fixed_target("border", (14, 14))[0, 0]
    assert m[:2].eq(1).all() and m[-2:].eq(1).all() and m[:, :2].eq(1).all() and m[:, -2:].eq(1).all()
    assert m[2:12, 2:12].eq(0).all()
    assert fixed_target("border", (28, 28))[0, 0, 3, 10] == 1 and fixed_target("border", (28, 28))[0, 0, 4, 10] == 0
    assert fixed_target("border", (14, 14), {"width": 1})[0, 0, 1, 5] == 0


def test_shapes_are_centred_and_symmetric():
    for name in ("square", "circle", "cross"):
        m = fixed_target(name, (15, 15))[0, 0]
        assert m[7, 7] == 1 and m[0, 0] == 0
        torch.testing.assert_close(m, m.flip(0))
        torch.testing.assert_close(m, m.flip(1))
    down = fixed_target("triangle", (15, 15))[0, 0]
    up = fixed_target("triangle", (15, 15), {"pointing": "up"})[0, 0]
    torch.testing.assert_close(down, up.flip(0))
    assert down[3].sum() > down[11].sum()  # wide at the top, apex at the bottom: a "give way" sign


def test_random_is_fixed_per_seed():
    a, b = fixed_target("random", (14, 14)), fixed_target("random", (14, 14))
    assert torch.equal(a, b)
    assert not torch.equal(a, fixed_target("random", (14, 14), {"seed": 1}))


def test_derived_targets():
    ref = torch.rand(3, 1, 6, 6)
    assert torch.equal(derived_target("reference", ref), ref)
    torch.testing.assert_close(derived_target("inverted", ref), 1 - ref)
    topk = derived_target("topk", ref, k=0.25)
    zeroed = (topk == 0) & (ref != 0)
    assert zeroed.flatten(1).sum(1).tolist() == [9, 9, 9]
    kept_max = ref.masked_fill(zeroed, -1).flatten(1).amax(1)
    zeroed_min = ref.masked_fill(~zeroed, 2).flatten(1).amin(1)
    assert (zeroed_min >= kept_max).all()  # the zeroed pixels are the largest ones
    assert target_maps("inverted", (6, 6), ref).shape == (3, 1, 6, 6)
    with pytest.raises(ConfigError, match="derived from the reference"):
        target_maps("topk", (6, 6))


@pytest.mark.parametrize("name,options,message", [
    ("bordr", {}, "Did you mean 'border'"),
    ("border", {"width": 0}, "border width"),
    ("border", {"width": 9}, "border width"),
    ("square", {"scale": 1.5}, r"scale must be a number in \(0, 1\]"),
    ("square", {"size": 3}, "bad options"),
    ("triangle", {"pointing": "left"}, "pointing"),
    ("random", {"cells": 0}, "cells"),
    ("topk", {"k": 2}, "fraction"),
    ("inverted", {"scale": 1}, "only the option 'k'"),
])
def test_bad_targets_rejected(name, options, message):
    with pytest.raises(ConfigError, match=message):
        check_target(name, options)


def test_offset_moves_a_shape():
    centred = fixed_target("square", (16, 16), {"scale": 0.25})
    moved = fixed_target("square", (16, 16), {"scale": 0.25, "offset": [-0.5, 0.5]})
    assert centred.sum() == moved.sum()
    rows, cols = torch.nonzero(moved[0, 0], as_tuple=True)
    assert rows.float().mean() < 8 and cols.float().mean() > 8  # top-right quadrant
    with pytest.raises(ConfigError, match="offset"):
        check_target("circle", {"offset": [2, 0]})
    with pytest.raises(ConfigError, match="offset"):
        check_target("circle", {"offset": "left"})
