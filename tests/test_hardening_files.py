"""Damaged files, unwritable output folders, odd text in figures and CLI flags end in clear errors (or literal
rendering), before any long work starts."""
from __future__ import annotations

import io
import math
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xaisec.audit.figures import norms_figure, triggers_figure
from xaisec.data.npz import load_npz
from xaisec.cli import main
from xaisec.data import ImageDataset
from xaisec.data.chestxray import read_findings
from xaisec.data.cub import _read_table
from xaisec.data.files import MAX_CLASSES, labels_from_array, read_npz, read_text_lines
from xaisec.errors import ConfigError, DataError, ModelError
from xaisec.figure_text import literal_text
from xaisec.io import check_writable_dir, load_weights, save_weights
from xaisec.models import model_from_entry_point
from xaisec.triggers import build_trigger

BINARY = bytes(range(256)) * 4
TRUNCATED_UTF8 = "1 001.Black_footed_Albatross/Bl\u00e4ck.jpg\n".encode()[:-8]  # cut inside a 2-byte character


@pytest.mark.parametrize("content", [BINARY, b"1 a.jpg\n2 b\xe4.jpg\n", TRUNCATED_UTF8[:33]], ids=["binary", "latin1", "truncated"])
@pytest.mark.parametrize("reader", ["cub", "chestxray_list", "chestxray_csv"])
def test_binary_or_truncated_index_files_name_the_file(tmp_path, reader, content):
    path = tmp_path / "index.txt"
    path.write_bytes(content)
    call = {"cub": lambda: _read_table(path, 2), "chestxray_list": lambda: read_text_lines(path, "chestxray14"),
            "chestxray_csv": lambda: read_findings(path)}[reader]
    with pytest.raises(DataError, match=r"index\.txt (is a binary file|is not UTF-8 text)"):
        call()


def _npz(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


IMAGES = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
LABELS = np.arange(20) % 4


@pytest.mark.parametrize("arrays,message", [
    ({"x": IMAGES, "y": LABELS, "x_test": IMAGES}, "has x_test but no y_test"),
    ({"x": IMAGES, "y": LABELS, "y_test": LABELS}, "has y_test but no x_test"),
    ({"x": IMAGES, "y": LABELS[:15]}, "holds 15 labels for 20 images"),
    ({"x": IMAGES, "y": LABELS + 0.5}, "not whole numbers"),
    ({"x": IMAGES, "y": np.where(LABELS == 0, 10**12, LABELS)}, rf"class indices must be in \[0, {MAX_CLASSES - 1}\]"),
    ({"x": IMAGES, "y": LABELS - 1}, "class indices must be in"),
    ({"x": IMAGES, "y": LABELS.reshape(4, 5)}, r"expected one class index per image"),
    ({"x": IMAGES, "y": LABELS.astype(str)}, "dtype <U"),
    ({"x": IMAGES.astype(str), "y": LABELS}, "images must be uint8"),
    ({"x": IMAGES}, "must hold arrays 'x'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_npz_files_with_missing_or_bad_labels_are_refused(tmp_path, arrays, message):
    with pytest.raises(DataError, match=message):
        load_npz(_npz(tmp_path, **arrays))


def test_whole_number_float_labels_are_accepted():
    assert labels_from_array(np.array([0.0, 3.0]), "y").tolist() == [0, 3]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really a zip", BINARY], ids=["empty", "bad zip", "binary"])
def test_corrupt_npz_files_are_refused(tmp_path, content):
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="data.npz"):
        read_npz(path)
    good = _npz(tmp_path, x=IMAGES, y=LABELS).read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_npz(path)


def test_a_huge_class_count_is_refused_before_allocating_names():
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(DataError, match="num_classes"):
        ImageDataset("d", x, torch.zeros(2, dtype=torch.long), x, torch.zeros(2, dtype=torch.long), num_classes=10**12)


def _png_claiming(tmp_path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose header (with a valid CRC) claims ``width`` x ``height`` pixels."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path = tmp_path / "trigger.png"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [5000, 30000])
def test_trigger_image_with_a_huge_header_is_refused_before_decoding(tmp_path, side):
    with pytest.raises(DataError, match="trigger.png"):
        build_trigger("image", image=str(_png_claiming(tmp_path, side, side)))


def test_output_folders_are_checked_before_the_work(tmp_path, monkeypatch):
    existing_file = tmp_path / "file"
    existing_file.write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        check_writable_dir(existing_file)
    with pytest.raises(ConfigError, match="cannot be created.*is a file"):
        check_writable_dir(existing_file / "sub" / "out")
    assert check_writable_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing is created by the check

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("xaisec.io.tempfile.mkstemp", refuse)
    with pytest.raises(ConfigError, match="not writable.*Permission denied"):
        check_writable_dir(tmp_path / "new")


@pytest.mark.parametrize("flags,message", [
    (["--out", "{file}"], "--out .* exists and is not a folder"),
    (["--out", "{file}/sub"], "--out .* cannot be created"),
    (["--budget", "nan"], r"--budget \(seconds\) must be a number in \(0"),
    (["--budget", "inf"], r"--budget \(seconds\) must be"),
    (["--budget", "-5"], r"--budget \(seconds\) must be"),
    (["--images", "5"], r"--images must be an int in \[10"),
])
def test_audit_flags_are_checked_before_loading_anything(tmp_path, capsys, flags, message):
    file = tmp_path / "file"
    file.write_text("x")
    argv = ["audit", "--model", "missing.safetensors", "--arch", "small_cnn", "--data", str(tmp_path / "missing.npz"),
            "--out", str(tmp_path / "out"), *[f.format(file=file) for f in flags]]
    assert main(argv) == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_audit_accepts_allow_pickle_and_passes_it_to_the_loader(tmp_path, capsys, tiny_cnn):
    model = tiny_cnn(num_classes=4)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    data = _npz(tmp_path, x=np.random.default_rng(0).random((40, 1, 12, 12)).astype(np.float32), y=np.arange(40) % 4)
    base = ["audit", "--model", str(tmp_path / "model.pt"), "--arch", "small_cnn", "--data", str(data),
            "--out", str(tmp_path / "out"), "--checks", "nope"]
    assert main(base) == 2
    assert "allow_pickle=True (--allow-pickle)" in capsys.readouterr().err
    assert main([*base, "--allow-pickle"]) == 2  # now the file is read: its (narrower) tensors reach the shape check
    err = capsys.readouterr().err
    assert "do not match the" in err and "allow_pickle" not in err


def test_explain_checks_out_before_training(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    assert main(["explain", "--out", str(file)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_module_function_models_load_from_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "my_local_models.py").write_text(
        "from xaisec.models import build_model\n\ndef net():\n    return build_model('mlp', (1, 4, 4), 3)\n")
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    model = model_from_entry_point("my_local_models:net")
    assert isinstance(model, torch.nn.Module) and sys.path == path_before
    with pytest.raises(ModelError, match="searched the current directory"):
        model_from_entry_point("no_such_module_here:net")
    with pytest.raises(ModelError, match="module.path:function"):
        model_from_entry_point("my_local_models:")


def test_weights_with_integer_or_non_finite_tensors_are_refused(tmp_path, tiny_cnn):
    from safetensors.torch import save_file

    model = tiny_cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    save_file({**state, name: state[name].round().to(torch.int32)}, str(tmp_path / "int.safetensors"))
    with pytest.raises(ModelError, match=rf"non-float tensors .*{name} \(torch.int32\)"):
        load_weights(tiny_cnn(), tmp_path / "int.safetensors")
    for bad in (math.nan, math.inf):
        save_file({k: torch.full_like(v, bad) if v.is_floating_point() else v for k, v in state.items()},
                  str(tmp_path / "nan.safetensors"))
        with pytest.raises(ModelError, match=r"contain NaN or inf values in \['features.0.bias'"):
            load_weights(tiny_cnn(), tmp_path / "nan.safetensors")
    save_weights(model, tmp_path / "ok.safetensors")
    load_weights(tiny_cnn(), tmp_path / "ok.safetensors")


NAMES = ["$\\foo$", "a $ b", "x^2_$", "\\", "$$", "plain"]


def test_user_text_reaches_audit_figures_literally():
    k = len(NAMES)
    png = triggers_figure(torch.rand(k, 1, 6, 6), torch.rand(k, 1, 6, 6), [3.0] * k, [1.0] * k, list(range(k)), NAMES, [0])
    assert png and norms_figure([5.0, 1.0, 4.0, 6.0, 5.5, 4.5], NAMES, [1], 2.0)
    assert literal_text("$\\foo$") == "\\$\\foo\\$" and literal_text(3) == "3"
