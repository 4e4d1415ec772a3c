"""Run directories: markers, one run per folder (claim, overwrite), the lock, interrupted runs, damaged files,
and file permissions from the user's umask."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xaisec.errors import ConfigError
from xaisec.io import atomic_write_json
from xaisec.runs.rundir import RunDir, unique_dir


def test_markers(tmp_path):
    rd = RunDir(tmp_path / "run").create({"a": 1}, seed=3)
    assert rd.status()["state"] == "running" and not rd.finished
    assert rd.read_config() == {"a": 1}
    env = json.loads((rd / "environment.json").read_text())
    assert env["seed"] == 3 and "torch" in env
    rd.set_status("finished", stage="done")
    assert rd.finished and rd.state() == "finished"
    assert unique_dir(tmp_path / "run") == tmp_path / "run-2"
    assert unique_dir(tmp_path / "new") == tmp_path / "new"


def test_claim_refuses_another_run_unless_overwrite(tmp_path):
    rd = RunDir(tmp_path / "run").create({"a": 1}, seed=0)
    rd.set_status("finished")
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--overwrite"):
        RunDir(rd.path).claim()
    (rd / "weights.safetensors").write_bytes(b"old")
    RunDir(rd.path).claim(overwrite=True)
    assert not (rd / "weights.safetensors").exists() and not (rd / "config.yaml").exists()


@pytest.mark.parametrize("setup", ["file", "foreign_folder", "under_a_file"])
def test_claim_rejects_unusable_paths_without_creating_anything(tmp_path, setup):
    target = tmp_path / "out"
    if setup == "file":
        target.write_text("x")
    elif setup == "foreign_folder":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    else:
        (tmp_path / "blocker").write_text("x")
        target = tmp_path / "blocker" / "run"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError):
        RunDir(target).claim(create=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_lock_keeps_a_second_writer_out_and_dies_with_its_process(tmp_path):
    rd = RunDir(tmp_path / "run").create({"a": 1}, seed=0)
    with rd.lock():
        with pytest.raises(ConfigError, match="another xaisec process"):
            with RunDir(rd.path).lock():
                pass
        assert RunDir(rd.path).state() == "running"  # another process holds the lock: really running
    # nobody holds the lock, the marker still says running: the run was killed
    assert RunDir(rd.path).state() == "interrupted"
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(rd / ".lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert RunDir(rd.path).state() == "running"
        with pytest.raises(ConfigError, match="still running"):
            RunDir(rd.path).claim(overwrite=True)
    finally:
        holder.kill()
        holder.wait()
    assert RunDir(rd.path).state() == "interrupted"


@pytest.mark.parametrize("content", [b"\x00\xff\xfe binary", b"a: !!python/object/apply:os.system ['true']\n",
                                     b"- just\n- a list\n"])
def test_damaged_config_is_named(tmp_path, content):
    rd = RunDir(tmp_path)
    (tmp_path / "config.yaml").write_bytes(content)
    with pytest.raises(ConfigError, match="config.yaml"):
        rd.read_config()


def test_damaged_json_is_named(tmp_path):
    (tmp_path / "metrics.json").write_text('{"metrics": {"a": ')
    with pytest.raises(ConfigError, match="metrics.json is damaged"):
        RunDir(tmp_path).read_json("metrics.json")


def test_artifacts_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
