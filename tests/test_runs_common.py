"""The reference training's batches: in-memory and streamed data give the same batches, augmentation optional."""
import torch
from trees import write_folder

from xaisec.data import load_dataset, open_dataset
from xaisec.data.augment import Augment, AugmentedBatches
from xaisec.data.loader import StreamBatches
from xaisec.runs.common import reference_batches


def test_reference_batches_for_memory_and_streamed_data_agree(tmp_path):
    write_folder(tmp_path / "train", per_class=5)
    write_folder(tmp_path / "val", per_class=1)
    memory = reference_batches(load_dataset("imagefolder", root=tmp_path, size=6), 4, seed=2)
    streamed = reference_batches(open_dataset("imagefolder", root=tmp_path, size=6), 4, seed=2)
    assert isinstance(streamed, StreamBatches)
    for batches in (memory, streamed):
        batches.set_epoch(3)
    for a, b in zip(memory, streamed, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    augmented = reference_batches(open_dataset("imagefolder", root=tmp_path, size=6), 4, seed=2, augment=Augment())
    assert isinstance(augmented, AugmentedBatches) and len(augmented) == 3
