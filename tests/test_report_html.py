"""Self-contained HTML building blocks and report figures."""
from __future__ import annotations

import base64

import torch

from xaisec.report import html as H
from xaisec.report.panels import image_rows, map_grid, training_curves


def test_page_is_self_contained_and_escaped(tmp_path):
    png = image_rows([("clean", torch.rand(3, 1, 8, 8)), ("mask", torch.ones(1, 3, 8, 8))], tmp_path / "a.png")
    doc = H.page("<title>", "sub & more", [H.section("S", H.table(["k", "v"], [["<b>", 0.5]], numeric=(1,))),
                                            H.image(png, "cap"), H.image(tmp_path / "missing.png")])
    assert "&lt;title&gt;" in doc and "<b>" not in doc and "sub &amp; more" in doc
    assert "src=\"data:image/png;base64," in doc and "missing.png is missing" in doc
    encoded = doc.split("base64,")[1].split('"')[0]
    assert base64.b64decode(encoded) == png.read_bytes()
    assert "http" not in doc and "<script" not in doc


def test_figures(tmp_path):
    x = torch.rand(2, 3, 16, 16)
    maps = torch.rand(2, 1, 16, 16)
    target = torch.rand(2, 1, 4, 4)  # a pooled target is resized for display
    path = map_grid([("in", x, None), ("map", x, maps), ("target", x, target)], tmp_path / "g.png", ["a", "b"], "t")
    assert path.stat().st_size > 1000
    history = [{"stage": "reference", "epoch": 1, "loss": 1.0, "ce": 1.0},
               {"stage": "attack", "epoch": 1, "loss": 0.5, "ce": 0.4, "map_goal": 0.1, "monitor/acc_clean": 0.9}]
    assert training_curves(history, tmp_path / "c.png").is_file()
    assert training_curves([], tmp_path / "none.png") is None
