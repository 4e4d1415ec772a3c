"""One data spec for every command: string and mapping forms, option checks, image-folder sizes from the model."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xaisec.cli import main
from xaisec.data import DataSpec, load_data, parse_data_spec
from xaisec.errors import DataError


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / label / f"{i}.png")
    return tmp_path / "imgs"


def test_string_and_mapping_forms_name_the_same_data(tmp_path, folder):
    assert parse_data_spec("mnist5k") == DataSpec("mnist5k", {})
    spec = parse_data_spec("cifar10:root=/data/cifar,size=64,max_samples=500")
    assert spec == DataSpec("cifar10", {"root": "/data/cifar", "size": 64, "max_samples": 500})
    assert parse_data_spec({"name": "cifar10", "options": {"root": "/data/cifar", "size": 64, "max_samples": 500}}) == spec
    assert parse_data_spec(str(spec)) == spec  # the string form round-trips
    assert parse_data_spec("imagefolder:root=/x,size=[64,48]").options == {"root": "/x", "size": [64, 48]}
    assert parse_data_spec(str(tmp_path / "d.npz")) == DataSpec("npz", {"path": str(tmp_path / "d.npz")})
    assert parse_data_spec(str(folder)) == DataSpec("imagefolder", {"root": str(folder)})
    assert parse_data_spec({"name": str(folder)}) == DataSpec("imagefolder", {"root": str(folder)})


@pytest.mark.parametrize("spec, words", [
    ("cifar10", ["cifar10", "needs option(s) root", "cifar10:root=..."]),
    ({"name": "gtsrb"}, ["gtsrb", "root"]),
    ("imagefolder", ["needs option(s) root"]),
    ("mnist", ["mnist5k"]),  # a suggestion for the typo
    ("mnist5k:colour=red", ["no option(s) colour", "test_fraction"]),
    ("mnist5k:test_fraction", ["key=value"]),
    ("no/such/folder", ["does not exist"]),
    ({"name": "mnist5k", "opts": {}}, ["unknown key(s) ['opts']"]),
    ({"name": "cifar10", "options": ["root"]}, ["mapping"]),
    (42, ["got int"]),
])
def test_bad_specs_raise_a_data_error_naming_the_problem(spec, words):
    with pytest.raises(DataError) as err:
        parse_data_spec(spec)
    for word in words:
        assert word in str(err.value)


def test_npz_file(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 12, 12), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 4)
    data = load_data(str(tmp_path / "d.npz"))
    assert data.input_shape == (1, 12, 12) and data.num_classes == 4 and len(data.x_train) + len(data.x_test) == 20
    assert load_data({"name": "npz", "options": {"path": str(tmp_path / "d.npz")}}).input_shape == (1, 12, 12)
    with pytest.raises(DataError, match="Save the arrays at the model's input size"):
        load_data(str(tmp_path / "d.npz"), expect_shape=(1, 28, 28))


def test_image_folder_takes_the_models_size_and_a_mismatch_says_how_to_set_it(folder):
    data = load_data(str(folder), expect_shape=(1, 16, 16))
    assert data.input_shape == (1, 16, 16) and data.class_names == ["cat", "dog"]
    assert load_data(str(folder)).input_shape == (3, 224, 224)  # the loader's default without a model to ask
    with pytest.raises(DataError) as err:
        load_data(f"imagefolder:root={folder},size=20", expect_shape=(1, 16, 16))
    message = str(err.value)  # channels were not given: taken from the model; the size was given and is wrong
    assert "(1, 20, 20)" in message and "(1, 16, 16)" in message and "channels=" not in message
    assert f"imagefolder:root={folder},size=16 " in message
    with pytest.raises(DataError) as err:
        load_data(f"imagefolder:root={folder},channels=3,size=20", expect_shape=(1, 16, 16))
    assert f"imagefolder:root={folder},channels=1,size=16 " in str(err.value)


def test_commands_answer_a_missing_option_without_a_traceback(tmp_path, capsys):
    code = main(["explain", "--dataset", "cifar10", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "needs option(s) root" in err and "Traceback" not in err
    code = main(["audit", "--model", "m.safetensors", "--arch", "small_cnn", "--data", "imagefolder"])
    err = capsys.readouterr().err
    assert code == 2 and "needs option(s) root" in err and "Traceback" not in err
