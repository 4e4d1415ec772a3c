"""Flushing subnormal floats: the context restores the caller's state, and training / attacks flush by default
with results equal to unflushed ones within a stated tolerance."""
import pytest
import torch

from xaisec.evasion import PGD
from xaisec.models import build_model
from xaisec.numerics import denormals_flushed, flush_denormals
from xaisec.train import LossOutput, TensorBatches, cross_entropy, fit

CAN_FLUSH = torch.set_flush_denormal(False)  # the setter says whether the CPU supports flushing; False is the default
needs_flushing = pytest.mark.skipif(not CAN_FLUSH, reason="this CPU cannot flush subnormals")


def subnormal_survives() -> bool:
    """Whether a subnormal float32 is kept (not flushed) by arithmetic on this thread."""
    return (torch.tensor([1], dtype=torch.int32).view(torch.float32) * 1.0).item() != 0.0


@pytest.fixture(autouse=True)
def unflushed():
    """Every test starts and ends with torch's default (no flushing), whatever it does in between."""
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


@needs_flushing
def test_state_is_read_from_behaviour():
    assert not denormals_flushed() and subnormal_survives()
    torch.set_flush_denormal(True)
    assert denormals_flushed() and not subnormal_survives()


@needs_flushing
def test_context_flushes_and_restores():
    with flush_denormals() as on:
        assert on and denormals_flushed() and not subnormal_survives()
        with flush_denormals():  # nested: still on, and the inner exit does not switch it off
            pass
        assert denormals_flushed()
    assert not denormals_flushed() and subnormal_survives()


def test_context_restores_after_an_exception():
    with pytest.raises(ValueError):
        with flush_denormals():
            raise ValueError("boom")
    assert not denormals_flushed()


@needs_flushing
def test_context_leaves_a_flushing_caller_flushing():
    torch.set_flush_denormal(True)
    with flush_denormals():
        pass
    with pytest.raises(RuntimeError):
        with flush_denormals():
            raise RuntimeError
    assert denormals_flushed()


def test_disabled_context_changes_nothing():
    with flush_denormals(enabled=False) as on:
        assert not on and not denormals_flushed()
    assert not denormals_flushed()


def _train(flush: bool, seen: list[bool]) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 12, 12), 3, width=8)
    x, y = torch.rand(32, 1, 12, 12, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 3

    def objective(m, batch) -> LossOutput:
        seen.append(denormals_flushed())
        return cross_entropy(m, batch)

    fit(model, TensorBatches(x, y, batch_size=16), objective, torch.optim.Adam(model.parameters(), lr=1e-2), 2,
        progress=False, flush_denormals=flush)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_fit_flushes_by_default_and_matches_an_unflushed_run():
    seen_on, seen_off = [], []
    flushed, plain = _train(True, seen_on), _train(False, seen_off)
    assert seen_on and all(seen_on) == CAN_FLUSH
    assert seen_off and not any(seen_off)
    assert not denormals_flushed()  # fit restored the caller's state
    # flushing only changes values below float32's normal range (1.2e-38): the weights agree to rounding
    torch.testing.assert_close(flushed, plain, rtol=1e-5, atol=1e-6)


def test_fit_restores_the_state_when_training_fails():
    model = build_model("small_cnn", (1, 12, 12), 3, width=8)

    def broken(m, batch):
        raise KeyError("objective failed")

    with pytest.raises(KeyError):
        fit(model, TensorBatches(torch.rand(4, 1, 12, 12), torch.zeros(4, dtype=torch.long)), broken,
            torch.optim.SGD(model.parameters(), lr=0.1), 1, progress=False)
    assert not denormals_flushed()


def test_attack_flushes_by_default_and_matches_an_unflushed_attack():
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 12, 12), 3, width=8).eval()
    x, y = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(2)), torch.arange(6) % 3
    seen = []
    attacks = {flush: PGD(model, eps=0.1, step=0.02, steps=5, flush_denormals=flush) for flush in (True, False)}
    evaluate = attacks[True].evaluate
    attacks[True].evaluate = lambda *a: (seen.append(denormals_flushed()), evaluate(*a))[1]
    x_flushed, x_plain = attacks[True](x, y), attacks[False](x, y)
    assert seen and all(seen) == CAN_FLUSH
    assert not denormals_flushed()
    # a pixel could differ by one step only if a gradient component were subnormal (sign 0 instead of +-1)
    torch.testing.assert_close(x_flushed, x_plain, rtol=0, atol=1e-6)


_WORKERS_SCRIPT = """
import logging, sys, torch
from types import SimpleNamespace
from xaisec import numerics
from xaisec.runs.runner import run_environment
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
torch.set_num_threads(2)
if sys.argv[1] == "pool_first":
    (torch.ones(1 << 22) * 0.5).sum()  # starts the intra-op workers before any flushing
cfg = SimpleNamespace(seed=0, threads=2, flush_denormals=True)
with run_environment(cfg):
    print("workers flushed:", numerics.workers_flushed())
"""


@pytest.mark.parametrize("order, flushed", [("run_first", True), ("pool_first", False)])
def test_a_run_flushes_the_worker_threads_it_starts(order, flushed, tmp_path):
    """Worker threads copy the flags of the thread that starts them: started inside a run they flush; started
    before it they do not, and the run says so."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", _WORKERS_SCRIPT, order], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert f"workers flushed: {flushed}" in out
    assert ("do not flush subnormal floats" in out) == (not flushed)


def test_importing_xaisec_first_makes_idle_openmp_workers_sleep():
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user set a policy (read when torch loads its OpenMP runtime)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = "import os, xaisec, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(Path(__file__).parents[1] / "src")

    def run(e: dict) -> str:
        return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120,
                              check=True).stdout.strip()

    assert run(env) == "PASSIVE"
    assert run({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
