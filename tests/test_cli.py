"""The command line: ``xaisec list`` and ``xaisec explain`` in-process, and as a real subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from xaisec.cli import main
from xaisec.io import save_weights
from xaisec.models import build_model

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "explainers:" in out and "gradcam" in out and "mnist5k" in out and "resnet20" in out
    assert main(["list", "explainer"]) == 0
    assert main(["list", "nothing"]) == 2
    assert "unknown kind" in capsys.readouterr().err


def test_explain_with_saved_weights(tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 28, 28), 10)
    save_weights(model, tmp_path / "m.safetensors")
    code = main(["explain", "--weights", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "out"),
                 "--methods", "gradcam,simplegrad,vbp", "--images", "3"])
    assert code == 0
    png = tmp_path / "out" / "explanations.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_explain_errors(tmp_path, capsys):
    assert main(["explain", "--weights", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    save_weights(build_model("small_cnn", (1, 28, 28), 10), tmp_path / "m.safetensors")
    assert main(["explain", "--weights", str(tmp_path / "m.safetensors"), "--arch", "resnet20", "--out", str(tmp_path)]) == 2
    assert "do not match" in capsys.readouterr().err
    assert main(["explain", "--weights", str(tmp_path / "m.safetensors"), "--methods", "gradcan", "--out", str(tmp_path)]) == 2
    assert "Did you mean 'gradcam'" in capsys.readouterr().err


def test_console_entry_point_runs_as_a_process():
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-m", "xaisec", "list", "models"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "small_cnn" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "xaisec", "nosuch"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "xaisec: error" in bad.stderr and "Traceback" not in bad.stderr


def test_explain_pickle_checkpoint_needs_opt_in(tmp_path, capsys):
    model = build_model("small_cnn", (1, 28, 28), 10)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    args = ["explain", "--weights", str(tmp_path / "m.pt"), "--methods", "gradcam", "--images", "2", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert main(args + ["--allow-pickle"]) == 0


def test_the_cli_starts_without_importing_scikit_learn():
    """scikit-learn costs seconds to import: only the commands that use it (tabular data, activation clustering)
    pay for it, on use."""
    import xaisec

    code = "import sys; from xaisec.cli import build_parser; build_parser(); print('sklearn' in sys.modules)"
    src = str(Path(xaisec.__file__).parents[1])  # the xaisec under test, not an installed one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
