"""Data-parallel training under torchrun: two CPU ranks (gloo) reach the weights of one process on the same global
batches, and only rank 0 writes the run directory."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

from xaisec import distributed
from xaisec.train import TensorBatches, cross_entropy, fit

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is unavailable")

ATOL = 1e-5  # measured: 4e-7 (float32 sums in another order)

TINY = """\
name: tiny
seed: 1
threads: 1
data: {name: shapes, options: {n: 160}, train_size: 64, test_size: 32}
model: {arch: small_cnn, options: {width: 8, batchnorm: false}}
reference: {epochs: 1, batch_size: 16}
trigger: {name: patch, options: {size: 4}}
attack: {recipe: fang_targeted, epochs: 1, batch_size: 16}
stopping: {monitor_size: 32}
eval: {samples: 3}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 3, 4, generator=g), torch.randint(0, 3, (50,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    fit(model, TensorBatches(x, y, batch_size=16, seed=3), cross_entropy, opt, 2, progress=False)  # last batch: 2
    return model


def _rank(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(_train(seed=rank).state_dict(), os.path.join(out, f"rank{rank}.pt"))  # seeds differ: broadcast
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process(tmp_path):
    torch.multiprocessing.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = _train().state_dict()
    for k, v in single.items():
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        torch.testing.assert_close(ranks[0][k], v, atol=ATOL, rtol=0)


def test_not_distributed_is_one_main_rank():
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1
    batch = (torch.arange(5),)
    assert distributed.shard(batch) == (batch, 1.0)


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed next to this Python")
def test_torchrun_backdoor_run(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "runs"
    subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "xaisec", "run",
                    str(config), "--out", str(out / "ddp")], env=env, check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "xaisec", "run", str(config), "--out", str(out / "one")], env=env,
                   check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in out.iterdir()) == ["ddp", "one"]  # rank 1 wrote no run directory
    assert (out / "ddp" / "metrics.json").is_file()
    for stage in ("reference", "attack"):
        ddp, one = (load_file(out / run / "checkpoints" / f"{stage}.safetensors") for run in ("ddp", "one"))
        for k, v in one.items():
            if k.startswith("model."):
                torch.testing.assert_close(ddp[k], v, atol=ATOL, rtol=0)
