"""Property-based fuzzing: any config data or override ends in a valid config or a ConfigError, nothing else."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xaisec.config import build, load_config, parse_overrides, require
from xaisec.errors import ConfigError


@dataclass
class Inner:
    rate: float = 0.1
    k: int = 3

    def __post_init__(self):
        require(0 <= self.rate <= 1, f"rate must be in [0,1], got {self.rate}")
        require(self.k >= 1, f"k must be >= 1, got {self.k}")


@dataclass
class Outer:
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    seed: Optional[int] = None
    flags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=8))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=8)
keys = st.sampled_from(["name", "mode", "seed", "flags", "inner", "rate", "k", "nme"]) | st.text(max_size=6)
tree = st.dictionaries(keys, values | st.dictionaries(st.sampled_from(["rate", "k", "x"]), values, max_size=3), max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree)
def test_any_data_is_valid_or_a_config_error(data):
    try:
        cfg = build(Outer, data)
    except ConfigError:
        return
    assert isinstance(cfg, Outer) and 0 <= cfg.inner.rate <= 1 and cfg.mode in ("a", "b")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=20) | st.builds(lambda k, v: f"{k}={v}", keys | st.just("inner.rate"), st.text(max_size=10)),
                max_size=4))
def test_any_override_is_valid_or_a_config_error(overrides):
    try:
        parse_overrides(overrides)
        cfg = load_config(Outer, overrides=overrides)
    except ConfigError:
        return
    assert isinstance(cfg, Outer)
