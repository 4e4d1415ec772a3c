"""The ``isic`` loader (ISIC 2018 Task 3 and 2019) on tiny trees in the challenge's exact on-disk layout."""
import numpy as np
import pytest

from xaisec.data import index_isic, load_dataset, open_dataset
from xaisec.data.isic import CLASSES
from xaisec.errors import DataError

from trees import ISIC_2018_IMAGES, assert_images, write_isic2018, write_isic2019


def _labels(split):
    return [CLASSES[2018].index(label) for _, label in ISIC_2018_IMAGES[split]]


def test_isic2018_reads_training_and_the_official_test_split(tmp_path):
    data = load_dataset("isic", root=write_isic2018(tmp_path), size=16)
    assert data.num_classes == 7 and data.class_names == CLASSES[2018]
    assert_images(data.x_train, 6, 3, 16, 16)
    assert_images(data.x_test, 3, 3, 16, 16)
    assert data.y_train.tolist() == _labels("Training") and data.y_test.tolist() == _labels("Test")
    validation = load_dataset("isic", root=tmp_path, size=16, test_split="validation")
    assert validation.y_test.tolist() == _labels("Validation")


def test_isic2018_without_test_folders_falls_back_to_validation_then_holdout(tmp_path):
    write_isic2018(tmp_path / "a", splits=("Training", "Validation"))
    assert index_isic(tmp_path / "a", size=8).test.labels.tolist() == _labels("Validation")
    write_isic2018(tmp_path / "b", splits=("Training",))
    index = index_isic(tmp_path / "b", size=8, test_fraction=0.5, seed=1)
    assert len(index.train) + len(index.test) == 6
    assert sorted([*index.train.labels, *index.test.labels]) == sorted(_labels("Training"))


def test_isic2019_drops_unk_and_holds_out_a_stratified_test_split(tmp_path):
    index = index_isic(write_isic2019(tmp_path), year=2019, size=8, test_fraction=1 / 3)
    assert index.num_classes == 8 and index.class_names[-1] == "SCC"
    assert np.bincount(index.test.labels, minlength=8).tolist() == [1] * 8
    assert any(p.name.endswith("_downsampled.jpg") for p in index.train.paths)
    with pytest.raises(DataError, match="no test ground truth.*holdout"):
        index_isic(tmp_path, year=2019, size=8, test_split="test")
    csv = tmp_path / "ISIC_2019_Training_GroundTruth.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0], lines[1][:-3] + "1.0", *lines[2:]]) + "\n")  # UNK set on a MEL image
    with pytest.raises(DataError, match=r"line 2: .*one-hot.*\(and 0 in \['UNK'\]\)"):
        index_isic(tmp_path, year=2019)


def test_isic_streams_the_same_pixels_as_the_in_memory_loader(tmp_path):
    write_isic2018(tmp_path)
    data, stream = load_dataset("isic", root=tmp_path, size=12), open_dataset("isic", root=tmp_path, size=12)
    x, y = stream.test[2][:2]
    assert np.allclose(np.asarray(x), data.x_test[2].numpy()) and int(y) == int(data.y_test[2])


def test_isic_missing_csv_is_named_with_the_layout(tmp_path):
    write_isic2018(tmp_path)
    (tmp_path / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv").unlink()
    with pytest.raises(DataError, match="ISIC2018_Task3_Training_GroundTruth.csv does not exist.*Expected layout"):
        index_isic(tmp_path)
    with pytest.raises(DataError, match="directory .* does not exist"):
        index_isic(tmp_path / "nowhere")


def test_isic_image_listed_but_absent_is_named(tmp_path):
    write_isic2018(tmp_path)
    (tmp_path / "ISIC2018_Task3_Test_Input" / "ISIC_0034525.jpg").unlink()
    with pytest.raises(DataError, match="1 image.*ISIC2018_Task3_Test_GroundTruth.csv.*ISIC_0034525.jpg"):
        index_isic(tmp_path)


@pytest.mark.parametrize("row, message", [
    ("ISIC_0024306,1.0,1.0,0.0,0.0,0.0,0.0,0.0", "line 2: image 'ISIC_0024306'.*one-hot"),   # two diagnoses
    ("ISIC_0024306,0.0,0.0,0.0,0.0,0.0,0.0,0.0", "line 2.*one-hot"),                          # none
    ("ISIC_0024306,0.5,0.5,0.0,0.0,0.0,0.0,0.0", "line 2.*one-hot"),                          # soft labels
    ("ISIC_0024306,x,1.0,0.0,0.0,0.0,0.0,0.0", "line 2.*not all numbers"),
    ("ISIC_0024306,0.0,1.0", "line 2: 3 fields for the 8 columns"),                            # truncated
])
def test_isic_bad_ground_truth_rows_are_named(tmp_path, row, message):
    write_isic2018(tmp_path)
    csv = tmp_path / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0], row, *lines[2:]]) + "\n")
    with pytest.raises(DataError, match=message):
        index_isic(tmp_path)


def test_isic_other_years_csv_and_bad_options_are_refused(tmp_path):
    write_isic2018(tmp_path)
    write_isic2019(tmp_path / "2019")
    target = tmp_path / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    target.write_text((tmp_path / "2019" / "ISIC_2019_Training_GroundTruth.csv").read_text())
    with pytest.raises(DataError, match="header.*ISIC 2018 ground truth has the columns.*data.options.year"):
        index_isic(tmp_path, year=2018)
    with pytest.raises(DataError, match="year must be one of"):
        index_isic(tmp_path, year=2020)
    with pytest.raises(DataError, match="test_split must be one of"):
        index_isic(tmp_path, test_split="val")


def test_isic_binary_csv_is_refused(tmp_path):
    write_isic2018(tmp_path)
    csv = tmp_path / "ISIC2018_Task3_Test_GroundTruth" / "ISIC2018_Task3_Test_GroundTruth.csv"
    csv.write_bytes(b"\x00\x01binary")
    with pytest.raises(DataError, match="binary file"):
        index_isic(tmp_path)
