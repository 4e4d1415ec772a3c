"""Property-based fuzzing of the command line: every invalid input ends in the tool's own error and exit code 2.

The experiment runners are replaced by a stub, so a *valid* random command stops right before any work starts.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xaisec.cli import build_parser, main
from xaisec.commands import run_cmd

SUBCOMMANDS = ["run", "report", "list", "explain", "audit"]
KEYS = ["name", "seed", "attack.epochs", "attack.recipe", "attack.explainers", "attack.lam", "data.name",
        "model.arch", "trigger.name", "attack.pool", "eval.fsr_thresholds", "experiment", "attack", "bogus.key"]
VALUES = st.sampled_from(["3", "-1", "0.5", "1e9", "nan", "[gradcam]", "[vbp, gradcan]", "gradcam", "true", "",
                          "{a: 1}", "fang_targeted", "mnist5k", "resnet20", "patch", "adv2", "[", "null"]) | st.text(max_size=6)
OVERRIDES = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS) | st.text(max_size=6), VALUES)
TOKENS = st.sampled_from(["--out", "--resume", "--help", "--model", "--arch", "--data", "--budget", "-v", "x", "default",
                          "nosuch.yaml", "--images", "0", "--methods"]) | st.text(max_size=8)


class Reached(Exception):
    """Raised by the stub runner: the command was valid and would now start working."""


@pytest.fixture
def stub_runner(monkeypatch):
    def runner(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(run_cmd, "run_experiment", runner)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(TOKENS, max_size=5), st.sampled_from(SUBCOMMANDS + ["", "bogus"]))
def test_argument_parsing_never_crashes(capsys, tokens, command):
    argv = ([command] if command else []) + tokens
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code in (0, 2)
    capsys.readouterr()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(OVERRIDES, min_size=1, max_size=4), st.sampled_from([None, "default", "fang_joint", "adv2_mnist5k"]))
def test_run_overrides_are_valid_or_exit_2(stub_runner, capsys, tmp_path_factory, overrides, config):
    argv = ["run", *([config] if config else []), *overrides, "--out", str(tmp_path_factory.mktemp("run"))]
    try:
        code = main(argv)
    except Reached:
        return
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "xaisec: error:" in err, (argv, code, err)
