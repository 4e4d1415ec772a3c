"""Registries: register, build by name or pass an object through, case-insensitive lookup, suggestions."""
from __future__ import annotations

import pytest

from xaisec.errors import XaisecError
from xaisec.registry import Registry


def test_registry():
    reg = Registry("thing")
    reg.register("alpha")(lambda k=1: ("alpha", k))
    assert reg.build("alpha", k=2) == ("alpha", 2) and reg.build(obj := object()) is obj
    assert "ALPHA" in reg and reg.names() == ["alpha"]
    with pytest.raises(KeyError):
        reg.register("alpha")(lambda: None)
    with pytest.raises(XaisecError, match="Did you mean 'alpha'"):
        reg.get("alpah")
