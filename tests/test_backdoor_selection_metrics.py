"""Noppel et al.'s selection pieces in the backdoor evaluation: the scoring rule, the test-set halves and their
map dissimilarities beside xaisec's."""
from __future__ import annotations

import pytest
import torch

from xaisec.backdoor.config import BackdoorConfig
from xaisec.backdoor.paper_metrics import noppel_mse
from xaisec.backdoor.results import noppel_score
from xaisec.config import build
from xaisec.data import StreamingData, TensorImages
from xaisec.errors import ConfigError
from xaisec.runs.backdoor import evaluation_split


def test_noppel_score_is_the_papers_weighted_sum():
    # (0.9-0.8)*30 + (0.9-0.7)*5 + 0.1 + 2*0.2 = 3 + 1 + 0.5
    assert noppel_score(0.9, 0.8, 0.7, 0.1, 0.2) == pytest.approx(4.5)
    assert noppel_score(0.9, 0.9, 0.9, 0.0, 0.0) == 0.0


def test_evaluation_split_halves_cover_the_test_set_once():
    x, y = torch.rand(7, 1, 4, 4), torch.arange(7)
    data = StreamingData("toy", TensorImages(x, y), TensorImages(x, y), num_classes=7, class_names=[])
    first, second = evaluation_split(data, "first_half"), evaluation_split(data, "second_half")
    labels = [torch.stack([part[i][1] for i in range(len(part))]) for part in (first, second)]
    assert torch.equal(torch.cat(labels), y) and len(first) == 3
    assert torch.equal(first[0][0], x[0]) and torch.equal(second[0][0], x[3])
    assert evaluation_split(data, "all") is data.test
    one = StreamingData("toy", TensorImages(x, y), TensorImages(x[:1], y[:1]), num_classes=7, class_names=[])
    with pytest.raises(ConfigError, match="eval.split"):
        evaluation_split(one, "first_half")


def test_eval_split_is_a_checked_config_key():
    assert build(BackdoorConfig, {"eval": {"split": "second_half"}}).eval.split == "second_half"
    with pytest.raises(ConfigError, match="split"):
        build(BackdoorConfig, {"eval": {"split": "half"}})


def test_noppel_mse_ignores_map_scale():
    maps = torch.rand(3, 1, 6, 6)
    assert noppel_mse(maps, 5 * maps + 2).abs().max() < 1e-4
    assert (noppel_mse(maps, torch.rand(3, 1, 6, 6)) > 0).all()
