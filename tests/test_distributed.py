"""Data-parallel training under torchrun: two CPU ranks (gloo) reach the weights of one process on the same global
batches, and only rank 0 writes the run directory."""
from __future__ import annotations

import json
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
from xaisec.errors import ConfigError
from xaisec.runs import load_experiment
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


def _evaluate() -> dict[str, torch.Tensor]:
    """Chunked evaluations that torchrun ranks share out: model_outputs (7 chunks of 2 images over 2 ranks: 3 + 4)
    and in_batches(gathered=True) with a nested gathered call inside a chunk."""
    from xaisec.backdoor.results import model_outputs
    from xaisec.evasion.evaluate import in_batches
    from xaisec.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 12, 12), 3, width=4)
    x = torch.rand(13, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    out = model_outputs(model, x, 1 - x, ["gradcam", "vbp"], batch_size=2)
    nested = in_batches(lambda xb: in_batches(lambda c: c * 2, 1, xb, gathered=True) + 1, 3, x, gathered=True)
    return {"logits_clean": out.logits_clean, "logits_trig": out.logits_trig, "nested": nested,
            **{f"{name}/{part}": maps[name] for part, maps in (("clean", out.maps_clean), ("trig", out.maps_trig))
               for name in ("gradcam", "vbp")}}


def _sync_batchnorm_on_cpu() -> str:
    """What SyncBatchNorm does on gloo CPU ranks: converted (state dict unchanged), eval mode works, train mode
    raises torch's error (the reason distributed.sync_batchnorm is refused without CUDA)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    keys = list(model.state_dict())
    model = distributed.sync_batchnorm(model)
    assert isinstance(model[1], nn.SyncBatchNorm) and list(model.state_dict()) == keys
    model.eval()(torch.rand(2, 1, 5, 5))
    try:
        model.train()(torch.rand(2, 1, 5, 5))
    except ValueError as exc:
        return str(exc)
    return "no error"


def _rank(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(_train(seed=rank).state_dict(), os.path.join(out, f"rank{rank}.pt"))  # seeds differ: broadcast
        torch.save(_evaluate(), os.path.join(out, f"eval{rank}.pt"))
        Path(out, f"syncbn{rank}.txt").write_text(_sync_batchnorm_on_cpu())
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process(tmp_path):
    torch.multiprocessing.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = _train().state_dict()
    for k, v in single.items():
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        torch.testing.assert_close(ranks[0][k], v, atol=ATOL, rtol=0)
    for r in range(2):
        assert "expected input tensor to be on GPU" in (tmp_path / f"syncbn{r}.txt").read_text()
    gathered = [torch.load(tmp_path / f"eval{r}.pt") for r in range(2)]
    for k, v in _evaluate().items():  # every rank holds the whole outputs, in order, equal to one process's
        assert v.shape[0] == 13 and torch.equal(gathered[0][k], v) and torch.equal(gathered[1][k], v), k


class Killed(Exception):
    pass


def _resume_rank(rank: int, world: int, port: int, out: str) -> None:
    """Each rank: an uninterrupted run into full/, a run into cut/ killed after the first attack epoch, then
    ``resume`` of cut/. Rank 1's temporary folders go to rank1-tmp/ (checked empty afterwards)."""
    import tempfile

    from xaisec.config import read_yaml
    from xaisec.runs import checkpoint, load_experiment, run_experiment

    torch.set_num_threads(1)
    if rank == 1:
        tempfile.tempdir = os.path.join(out, "rank1-tmp")
        os.makedirs(tempfile.tempdir)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        _, cfg = load_experiment(read_yaml(os.path.join(out, "tiny.yaml")))
        runs = os.path.join(out, "runs")
        run_experiment(cfg, os.path.join(runs, "full"), progress=False)
        real = checkpoint.save_checkpoint

        def dies_after_first_attack_epoch(path, model, optimizer, state):
            real(path, model, optimizer, state)
            if Path(path).name == "attack.safetensors" and state["epoch"] == 0:
                raise Killed

        checkpoint.save_checkpoint = dies_after_first_attack_epoch
        try:
            run_experiment(cfg, os.path.join(runs, "cut"), progress=False)
            raise AssertionError("the run was not interrupted")
        except Killed:
            pass
        finally:
            checkpoint.save_checkpoint = real
        run_experiment(cfg, os.path.join(runs, "cut"), resume=True, progress=False)
    finally:
        dist.destroy_process_group()


def test_not_distributed_is_one_main_rank():
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1
    batch = (torch.arange(5),)
    assert distributed.shard(batch) == (batch, 1.0)
    assert distributed.gather_map(lambda i: i * i, 4) == [0, 1, 4, 9]
    model = nn.BatchNorm2d(2)
    assert distributed.sync_batchnorm(model) is model  # one process: nothing to synchronise


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal concerns machines without CUDA")
def test_sync_batchnorm_is_refused_without_cuda():
    with pytest.raises(ConfigError, match=r"distributed.sync_batchnorm needs CUDA devices \(device resolves to cpu\)"):
        load_experiment({"distributed": {"sync_batchnorm": True}})
    with pytest.raises(ConfigError, match="sync_batchnorm needs CUDA"):
        load_experiment({"experiment": "adv2", "distributed": {"sync_batchnorm": True}})
    assert not load_experiment({})[1].distributed.sync_batchnorm


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
    ddp, one = (json.loads((out / run / "metrics.json").read_text())["metrics"] for run in ("ddp", "one"))
    assert ddp.keys() == one.keys()  # the gathered evaluation covers the whole test split, as one process does
    for k, m in one.items():
        assert m["value"] == pytest.approx(ddp[k]["value"], abs=1e-4, nan_ok=True), k


def test_resume_with_two_ranks_equals_uninterrupted(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY.replace("attack: {recipe: fang_targeted, epochs: 1",
                                                     "attack: {recipe: fang_targeted, epochs: 2"))
    torch.multiprocessing.spawn(_resume_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["cut", "full"]  # rank 1 wrote no run directory ...
    assert not any((tmp_path / "rank1-tmp").iterdir())  # ... and left nothing in its temporary folder
    cut = json.loads((runs / "cut" / "log.jsonl").read_text().splitlines()[-1])
    assert (cut["stage"], cut["epoch"]) == ("attack", 2)
    for name in ("reference", "attacked"):
        full, resumed = (load_file(runs / run / f"{name}.safetensors") for run in ("full", "cut"))
        assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full), name
    assert (json.loads((runs / "cut" / "metrics.json").read_text())
            == json.loads((runs / "full" / "metrics.json").read_text()))
