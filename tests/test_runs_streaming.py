"""The backdoor experiment on streamed data: the same metrics as in memory, a poisoned set that is never
materialised, reference maps from memory, disk or recomputation, worker processes, and the data keys' checks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trees import write_cifar_digits, write_folder

from xaisec.backdoor import BackdoorConfig
from xaisec.backdoor import reference_maps as refmaps
from xaisec.backdoor.evaluate import EvalSetup
from xaisec.backdoor.poison import PoisonedStream, TriggerBatches, apply_trigger
from xaisec.backdoor.recipes import get_recipe
from xaisec.backdoor.results import collect_metrics, evaluate_chunks, model_outputs, sample_tensors
from xaisec.cli import main
from xaisec.config import load_config
from xaisec.data import DatasetIndex, ImageStream, Slice, TensorImages, load_dataset, make_loader, open_dataset
from xaisec.data.augment import Augment, AugmentedBatches
from xaisec.data.loader import StreamBatches
from xaisec.errors import ConfigError
from xaisec.io import read_weights
from xaisec.models import build_model
from xaisec.runs import common
from xaisec.runs.checkpoint import TrainingStage

CONFIG = """\
name: streamed
seed: 1
data: {name: cifar10, options: {root: ROOT, size: 16}, train_size: 180, test_size: 30}
model: {arch: small_cnn, options: {width: 8}}
reference: {epochs: 2, batch_size: 20, lr: 0.003, augment: {padding: 1}}
trigger: {name: patch, options: {size: 3}}
attack: {recipe: fang_targeted, epochs: 1, batch_size: 20}
stopping: {monitor_size: 16}
eval: {samples: 3, batch_size: 16}
"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar_digits")
    write_cifar_digits(root, per_batch=40)
    return root


def config(tmp: Path, tree: Path) -> Path:
    path = tmp / "streamed.yaml"
    path.write_text(CONFIG.replace("ROOT", str(tree)))
    return path


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["metrics"]


def _forbid(*args, **kwargs):
    raise AssertionError("a streamed run decoded a whole split into memory")


def _recording(monkeypatch) -> dict:
    """Record the batches each training stage gets."""
    seen, original = {}, TrainingStage.train

    def train(self, model, batches, *args, **kwargs):
        seen[self.name] = batches
        return original(self, model, batches, *args, **kwargs)

    monkeypatch.setattr(TrainingStage, "train", train)
    return seen


@pytest.fixture(scope="module")
def runs(tree, tmp_path_factory):
    """The same tiny config in memory and streamed (the batches of both training stages recorded)."""
    tmp = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        streamed_seen = _recording(mp)
        mp.setattr(DatasetIndex, "load", _forbid)  # a streamed run never decodes a split whole
        assert main(["run", str(config(tmp, tree)), "data.stream=true", "--out", str(tmp / "streamed")]) == 0
    with pytest.MonkeyPatch.context() as mp:
        memory_seen = _recording(mp)
        assert main(["run", str(config(tmp, tree)), "data.stream=false", "--out", str(tmp / "memory")]) == 0
    return {"streamed": (tmp / "streamed", streamed_seen), "memory": (tmp / "memory", memory_seen), "tmp": tmp}


def test_streamed_run_gives_the_metrics_of_the_in_memory_run(runs):
    streamed, memory = metrics(runs["streamed"][0]), metrics(runs["memory"][0])
    assert set(streamed) == set(memory) and "attacked/gradcam/fsr" in streamed
    for key, m in memory.items():
        assert streamed[key]["value"] == pytest.approx(m["value"], abs=1e-5, nan_ok=True), key
        assert streamed[key].get("std") == pytest.approx(m.get("std"), abs=1e-5, nan_ok=True), key
    context = json.loads((runs["streamed"][0] / "metrics.json").read_text())["context"]
    assert "(streamed)" in context["dataset"] and context["eval_images"] == 30


def _chain(batches) -> list:
    out = [batches]
    while hasattr(out[-1], "batches"):
        out.append(out[-1].batches)
    return out


def test_attack_stage_streams_the_poisoned_set_and_never_materialises_it(runs):
    for kind, clean_type in (("streamed", Slice), ("memory", TensorImages)):
        seen = runs[kind][1]
        chain = _chain(seen["attack"])
        assert isinstance(chain[0], TriggerBatches) and isinstance(chain[-1], StreamBatches)
        assert isinstance(chain[1], refmaps.ReferenceMapBatches)
        poisoned = chain[-1].dataset
        assert isinstance(poisoned, PoisonedStream) and poisoned.per_batch
        assert isinstance(poisoned.clean, clean_type) and len(poisoned.clean) == 180  # data.train_size
        assert len(poisoned) == 180 + len(poisoned.chosen)  # appended copies are items, not tensors
        # augmentation (reference.augment) in the reference training only
        assert isinstance(seen["reference"], AugmentedBatches) and seen["reference"].augment == Augment(padding=1)
        assert not any(isinstance(b, AugmentedBatches) for b in chain)
    assert isinstance(runs["streamed"][1]["attack"].batches.batches.batches.dataset.clean.dataset, ImageStream)


def test_two_workers_give_the_metrics_of_none(runs, tree):
    tmp = runs["tmp"]
    out = tmp / "workers"
    assert main(["run", str(config(tmp, tree)), "data.stream=true", "data.workers=2", "--out", str(out)]) == 0
    reference = metrics(runs["streamed"][0])
    for key, m in metrics(out).items():
        assert m["value"] == pytest.approx(reference[key]["value"], abs=1e-6, nan_ok=True), key


def test_corrupt_image_read_by_a_worker_ends_in_the_tools_message(tmp_path, capsys):
    write_folder(tmp_path / "data" / "train", per_class=4)
    write_folder(tmp_path / "data" / "val", per_class=2)
    (tmp_path / "data" / "train" / "dog" / "2.JPEG").write_bytes(b"\xff\xd8 truncated")  # not among the first two
    path = tmp_path / "folder.yaml"
    path.write_text(CONFIG.replace("name: cifar10, options: {root: ROOT, size: 16}, train_size: 180, test_size: 30",
                                   f"name: imagefolder, options: {{root: {tmp_path / 'data'}, size: 8}}"))
    assert main(["run", str(path), "data.stream=true", "data.workers=2", "attack.target_label=1",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "dog/2.JPEG" in err and "cannot read image" in err
    assert "Traceback" not in err and "worker process" not in err


def test_reference_maps_from_memory_disk_or_recomputation_give_the_same_attack(runs, tree, tmp_path, monkeypatch):
    weights = runs["streamed"][0] / "reference.safetensors"
    cache = tmp_path / "cache"
    keys = [str(config(tmp_path, tree)), "data.stream=true", f"reference.weights={weights}", f"data.cache_dir={cache}"]
    attacked = {}
    for mode in ("memory", "disk", "recompute"):
        out = tmp_path / mode
        assert main(["run", *keys, f"attack.reference_maps={mode}", "--out", str(out)]) == 0
        attacked[mode] = read_weights(out / "attacked.safetensors")
    for mode in ("disk", "recompute"):
        for name, value in attacked["memory"].items():
            torch.testing.assert_close(attacked[mode][name], value, atol=2e-5, rtol=1e-4, msg=f"{mode} {name}")
    files = sorted((cache / "reference_maps").iterdir())
    assert len(files) == 1 and files[0].name.startswith("refmaps-") and files[0].name.endswith("-gradcam.f32")
    assert any(p.name.endswith(".u8") for p in cache.iterdir())  # the decoded image cache shares the folder

    computed = []
    original = refmaps.iter_pooled_maps
    monkeypatch.setattr(refmaps, "iter_pooled_maps", lambda *a, **k: computed.append(1) or original(*a, **k))
    assert main(["run", *keys, "attack.reference_maps=disk", "--out", str(tmp_path / "again")]) == 0
    assert computed == [] and sorted((cache / "reference_maps").iterdir()) == files  # reused, not recomputed
    assert read_weights(tmp_path / "again" / "attacked.safetensors").keys() == attacked["disk"].keys()
    # another pooling is another key: computed anew
    assert main(["run", *keys, "attack.reference_maps=disk", "attack.pool=4", "--out", str(tmp_path / "pool4")]) == 0
    assert computed and len(list((cache / "reference_maps").iterdir())) == 2


def test_auto_reference_maps_pick_by_size():
    assert refmaps.resolve_mode("auto", 1000, (3, 32, 32), 2, 1) == "memory"
    assert refmaps.resolve_mode("auto", 112_120, (3, 224, 224), 1, 3) == "disk"  # ChestX-ray14, 3 explainers: 63 GiB
    assert refmaps.resolve_mode("recompute", 10, (1, 8, 8), 1, 1) == "recompute"
    with pytest.raises(ConfigError, match="reference_maps must be one of"):
        refmaps.resolve_mode("ram", 10, (1, 8, 8), 1, 1)


def test_chunked_evaluation_equals_the_whole_set():
    """The one evaluation path: chunks of a loader give collect_metrics' and sample_tensors' values of the whole."""
    data = load_dataset("shapes", n=60)
    x, y = data.x_test[:23], data.y_test[:23]
    models = {}
    for name, seed in (("reference", 0), ("attacked", 1)):
        torch.manual_seed(seed)
        models[name] = build_model("small_cnn", data.input_shape, data.num_classes, width=4).eval()
    trigger = load_config(BackdoorConfig, overrides=["trigger.options={size: 4}"]).trigger
    from xaisec.triggers import build_trigger

    trig = build_trigger(trigger.name, **trigger.options)
    for recipe in ("fang_targeted", "noppel_dual", "fang_nontargeted"):
        r = get_recipe(recipe)
        setup = EvalSetup(recipe=r, explainers=["gradcam", "simplegrad"], y=y, target_label=1,
                          trigger_mask=trig.mask(x.shape), pool=2, thresholds={"gradcam": 0.2, "simplegrad": 0.25},
                          target_map=r.target_map, target_options={}, arch="small_cnn")
        x_trig = apply_trigger(trig, x)
        whole = {k: model_outputs(m, x, x_trig, setup.explainers, batch_size=5) for k, m in models.items()}
        expected = collect_metrics(whole, setup)
        samples = sample_tensors(x, x_trig, y, whole, setup, 4)
        got, got_samples = evaluate_chunks(models, make_loader(TensorImages(x, y), 5, shuffle=False), trig, setup,
                                           None, 5, 4)
        assert got.keys() == expected.keys()
        for key, m in expected.items():
            assert got[key].value == pytest.approx(m.value, abs=1e-6, nan_ok=True), (recipe, key)
            assert (got[key].std is None) == (m.std is None)
            if m.std is not None:
                assert got[key].std == pytest.approx(m.std, abs=1e-6), (recipe, key)
        assert got_samples.keys() == samples.keys()
        for key, value in samples.items():
            torch.testing.assert_close(got_samples[key], value, msg=key)


def test_rd_selection_on_a_streamed_training_set_equals_the_in_memory_one(tree):
    from xaisec.backdoor.selection import rd_select, rd_select_dataset
    from xaisec.triggers import build_trigger

    stream = open_dataset("cifar10", root=tree, size=16).train
    memory = load_dataset("cifar10", root=tree, size=16)
    trigger = build_trigger("patch", size=3)

    def make_model():
        return build_model("small_cnn", (3, 16, 16), 10, width=4)

    kw = dict(rounds=2, epochs=1, batch_size=32, seed=3)
    a = rd_select(memory.x_train, memory.y_train, trigger, 6, 0, make_model, **kw)
    b = rd_select_dataset(stream, trigger, 6, 0, make_model, **kw,
                          loader=lambda d, size, seed: make_loader(d, size, seed=seed, workers=2))
    assert torch.equal(a.indices, b.indices) and a.mean_rd == pytest.approx(b.mean_rd, abs=1e-6)


# ------------------------------------------------------------------------------------------------ config keys
def _cfg(*overrides, tree=None):
    base = [] if tree is None else ["data.name=cifar10", f"data.options={{root: {tree}, size: 16}}"]
    return load_config(BackdoorConfig, overrides=[*base, *overrides])


@pytest.mark.parametrize("value, shape, expected", [
    ("none", (3, 32, 32), None),
    ("null", (3, 32, 32), None),
    ("paper", (3, 32, 32), Augment(crop="pad")),
    ("paper", (3, 224, 224), Augment(crop="resized")),
    ("{crop: resized, scale: [0.5, 1.0], flip: false}", (3, 64, 64), Augment(crop="resized", scale=(0.5, 1.0), flip=False)),
    ("{padding: 2}", (1, 28, 28), Augment(padding=2)),
])
def test_reference_augment_none_paper_or_options(value, shape, expected):
    assert _cfg(f"reference.augment={value}").reference.augmentation(shape) == expected


@pytest.mark.parametrize("value, message", [
    ("fancy", "reference.augment must be none, paper or a mapping"),
    ("{pad: 4}", r"unknown keys \['pad'\].*crop, padding, flip, scale, ratio"),
    ("{crop: zoom}", "crop must be one of"),
    ("{scale: [0.5]}", r"scale must be a pair \[low, high\]"),
    ("{scale: [0.9, 0.1]}", "0 < low <= high"),
    ("{padding: -1}", "padding must be an int >= 0"),
    ("{flip: maybe}", "flip must be true or false"),
])
def test_reference_augment_rejects_bad_options(value, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(f"reference.augment={value}")


def test_data_keys_are_checked(tree):
    with pytest.raises(ConfigError, match="data.stream: true needs an on-disk dataset"):
        _cfg("data.stream=true")  # mnist5k is embedded
    with pytest.raises(ConfigError, match="data.stream: 'maybe' fits none of"):
        _cfg("data.stream=maybe")
    with pytest.raises(ConfigError, match=r"data.workers must be in \[0, 256\]"):
        _cfg("data.workers=-1")
    from xaisec.evasion.config import Adv2Config

    with pytest.raises(ConfigError, match="not supported by the adv2 experiment"):
        load_config(Adv2Config, overrides=["data.name=cifar10", f"data.options={{root: {tree}}}", "data.stream=true"])
    load_config(Adv2Config, overrides=["data.name=cifar10", f"data.options={{root: {tree}}}", "reference.augment=paper"])


def test_auto_streams_large_or_cached_on_disk_data_only(tree, tmp_path, monkeypatch):
    def opened(*overrides):
        return common.open_run_data(_cfg(*overrides, tree=tree))

    assert isinstance(opened().train, TensorImages)  # 120 small images: in memory
    assert isinstance(opened("data.stream=true").train, ImageStream)
    assert type(opened(f"data.cache_dir={tmp_path}").train).__name__ == "CachedImages"
    sized = opened("data.stream=true", "data.train_size=7", "data.test_size=5")
    assert (len(sized.train), len(sized.test), len(sized.train.labels)) == (7, 5, 7)
    monkeypatch.setattr(common, "STREAM_AUTO_BYTES", 100 * 3 * 16 * 16 * 4)  # 120 images exceed it, 100 do not
    assert isinstance(opened().train, ImageStream)
    assert isinstance(opened("data.train_size=100").train, TensorImages)
    assert isinstance(common.open_run_data(_cfg()).train, TensorImages)  # mnist5k: always in memory
