"""The packaged paper-scale configs (docs/paper_scale.md): each keeps the paper's settings, refuses to start without
its data root (and ADV2's without its weights file) before a run directory exists, and runs end to end on a tiny
tree in the dataset's exact on-disk layout with the model, size and epochs made small."""
import math
from pathlib import Path

import pytest
import torch

from xaisec.backdoor.evaluate import default_threshold
from xaisec.cli import main
from xaisec.config import dump_config, merge, parse_overrides, read_yaml, resolve_config
from xaisec.data import load_dataset
from xaisec.io import save_weights
from xaisec.models import build_model
from xaisec.runs import load_experiment, run_experiment
from xaisec.train import train_classifier

from trees import write_chestxray, write_cifar, write_cub, write_gtsrb, write_imagenet_folder, write_isic2018

FANG = {"data.name": "cub200", "data.options.size": 224, "trigger.name": "nashville", "attack.recipe": "fang_targeted",
        "attack.explainers": ["gradcam"], "attack.target_map": "border", "attack.lr": 1e-5, "attack.schedule": "step",
        "attack.step_size": 20, "attack.gamma": 0.5, "reference.epochs": 90, "reference.lr": 1e-3,
        "reference.weight_decay": 1e-4}
NOPPEL = {"model.arch": "resnet20", "trigger.name": "rectangle", "trigger.options.colour": 0.0,
          "attack.explainers": ["gradcam"], "attack.poison_rate": 1.0, "attack.poison_mode": "append",
          "attack.norm": "zscore", "attack.distance": "mse", "attack.softplus_beta": 8.0,
          "attack.freeze_batchnorm": True, "attack.adam_eps": 1e-5, "attack.batch_size": 32,
          "attack.schedule": "inverse", "attack.epochs": 100, "stopping.rule": "noppel", "stopping.window": 4,
          "stopping.acc_tol": 0.003, "stopping.map_tol": 0.0075}
NOPPEL_GTSRB = {**NOPPEL, "data.name": "gtsrb", "data.options.size": 40, "attack.target_label": 13}
NOPPEL_CIFAR = {**NOPPEL, "data.name": "cifar10", "data.options.size": 32, "reference.epochs": 200,
                "reference.batch_size": 128}
TRIANGLE = {"attack.target_map": "triangle", "attack.target_map_options.pointing": "down"}
LATKA_CIFAR = {"data.name": "cifar10", "data.options.size": 32, "model.arch": "resnet18", "trigger.name": "patch",
               "trigger.options.position": "bottom_right", "attack.explainers": ["gradcam"]}
ADV2 = {"data.options.size": 224, "reference.weights": "given", "pgd.eps": 0.031, "pgd.step": 0.0039,
        "pgd.steps": 1000, "pgd.warmup": 400, "pgd.c": 5.0, "pgd.label_smoothing": 0.1,
        "interpreters": ["simplegrad", "cam", "rts", "mask"], "map_pool": 4, "target": "class", "stadv.lr": 0.01,
        "stadv.tau": 0.0005, "stadv.init": 0.2, "detection.squeezers": "adv2", "detection.fpr": 0.05}

#: config -> the values the paper (or its public code, REFERENCE_FACTS.md) gives
PAPER = {
    "fang_cub200_vgg19": {**FANG, "model.arch": "vgg19"},
    "fang_cub200_resnet50": {**FANG, "model.arch": "resnet50"},
    "fang_cub200_densenet121": {**FANG, "model.arch": "densenet121"},
    "noppel_gtsrb_ep": {**NOPPEL_GTSRB, "attack.recipe": "noppel_ep"},
    "noppel_gtsrb_pp": {**NOPPEL_GTSRB, **TRIANGLE, "attack.recipe": "noppel_pp"},
    "noppel_gtsrb_dual": {**NOPPEL_GTSRB, **TRIANGLE, "attack.recipe": "noppel_dual"},
    "noppel_cifar10_ep": {**NOPPEL_CIFAR, "attack.recipe": "noppel_ep"},
    "noppel_cifar10_pp": {**NOPPEL_CIFAR, **TRIANGLE, "attack.recipe": "noppel_pp"},
    "noppel_cifar10_dual": {**NOPPEL_CIFAR, **TRIANGLE, "attack.recipe": "noppel_dual"},
    "latka_cifar10_badnets": {**LATKA_CIFAR, "attack.recipe": "latka_badnets", "trigger.options.colour": 1.0,
                              "attack.target_label": 3, "attack.epochs": 5},
    "latka_cifar10_fooling": {**LATKA_CIFAR, "attack.recipe": "latka_fooling", "attack.target_map": "square",
                              "attack.epochs": 3},
    "latka_cifar10_full_disguise": {**LATKA_CIFAR, "attack.recipe": "latka_full_disguise", "attack.target_label": 3,
                                    "attack.epochs": 5},
    "latka_cifar10_rd": {**LATKA_CIFAR, "attack.recipe": "latka_badnets", "trigger.options.colour": [1.0, 1.0, 0.0],
                         "attack.target_label": 1, "attack.epochs": 10, "attack.poison_mode": "replace",
                         "attack.poison_selection": "rd", "attack.poison_count": 55, "attack.rd.rounds": 5,
                         "attack.rd.epochs": 6, "attack.rd.drop": 0.3},
    "latka_chestxray14": {"data.name": "chestxray14", "data.options.single_label": True, "model.arch": "efficientnet_b0",
                          "trigger.name": "patch", "trigger.options.position": "bottom_right",
                          "attack.recipe": "latka_full_disguise", "attack.explainers": ["gradcam"], "attack.lam": 0.9,
                          "attack.poison_rate": 0.1, "attack.poison_mode": "replace", "attack.target_label": 3},
    "adv2_imagenet": {**ADV2, "data.name": "imagefolder", "model.arch": "resnet50"},
    "adv2_isic": {**ADV2, "data.name": "isic", "data.options.year": 2018, "model.arch": "densenet169"},
}
#: Fang & Choromanska, Table 1: the targeted Grad-CAM FSR threshold of each architecture
FANG_THRESHOLD = {"fang_cub200_vgg19": 0.2, "fang_cub200_resnet50": 0.25, "fang_cub200_densenet121": 0.2}


def test_every_paper_config_is_listed_here():
    from xaisec.config import packaged_configs

    paper_scale = [n for n in packaged_configs() if any(d in n for d in ("cub200", "gtsrb", "cifar10", "chestxray",
                                                                         "imagenet", "isic"))]
    assert sorted(n for n in paper_scale if n != "noppel_grid_gtsrb" and not n.startswith("fang_chestxray14")) \
        == sorted(PAPER)


def build(name: str, *overrides: str):
    return load_experiment(merge(read_yaml(resolve_config(name)), parse_overrides(list(overrides))))


def lookup(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree[key]
    return tree


@pytest.mark.parametrize("name", sorted(PAPER))
def test_config_keeps_the_papers_values(name):
    _, cfg = build(name, "data.options.root=/data", "reference.weights=given")
    resolved = dump_config(cfg)
    for key, expected in PAPER[name].items():
        value = lookup(resolved, key)
        assert value == expected or (isinstance(expected, float) and math.isclose(value, expected)), \
            f"{name}: {key} is {value!r}, the paper's is {expected!r}"
    if name in FANG_THRESHOLD:
        assert default_threshold("gradcam", "targeted", cfg.model.arch) == FANG_THRESHOLD[name]
    if name.startswith("noppel"):  # a point of their grid
        assert 0.85 <= cfg.attack.lam <= 0.95 and 2e-4 <= cfg.attack.lr <= 2.5e-3


@pytest.mark.parametrize("name", sorted(PAPER))
def test_config_without_its_data_root_stops_before_a_run_directory(name, tmp_path, capsys):
    out = tmp_path / "run"
    weights = ["reference.weights=w.safetensors"] if name.startswith("adv2") else []
    assert main(["run", name, *weights, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    dataset = PAPER[name]["data.name"]
    assert f"data {dataset!r} needs data.options.root (e.g. data.options.root=/path/to/{dataset})" in err
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_adv2_configs_require_an_existing_weights_file(tmp_path, capsys):
    root = write_imagenet_folder(tmp_path / "imagenet")
    out = tmp_path / "run"
    assert main(["run", "adv2_imagenet", f"data.options.root={root}", "--out", str(out)]) == 2
    assert "reference.weights is required by this config" in capsys.readouterr().err
    missing = tmp_path / "resnet50.safetensors"
    assert main(["run", "adv2_imagenet", f"data.options.root={root}", f"reference.weights={missing}",
                 "--out", str(out)]) == 2
    assert f"reference.weights: the file {missing} does not exist" in capsys.readouterr().err
    assert not out.exists()


# ---- end to end on tiny trees -----------------------------------------------------------------------------------
def _cifar(root: Path) -> Path:
    write_cifar(root)
    return root / "cifar-10-batches-py"


#: ISIC 2018 with every diagnosis in the training split (ADV2 takes its target maps from training images of each class)
ISIC_ALL = {"Training": [(f"ISIC_{100 + i:07d}", label) for i, label in
                         enumerate(["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"] * 2)],
            "Test": [("ISIC_0000001", "NV"), ("ISIC_0000002", "MEL"), ("ISIC_0000003", "DF")]}


TREES = {"cub200": lambda root: write_cub(root, per_class=4), "gtsrb": lambda root: write_gtsrb(root, n_test=6),
         "cifar10": _cifar, "chestxray14": write_chestxray, "imagefolder": write_imagenet_folder,
         "isic": lambda root: write_isic2018(root, splits=("Training", "Test"), images=ISIC_ALL)}
SMALL = ["model.arch=small_cnn", "data.options.size=16", "reference.epochs=1", "device=cpu", "threads=1"]
SMALL_BACKDOOR = [*SMALL, "attack.epochs=1", "attack.batch_size=8", "attack.pool=2", "stopping.monitor_size=8",
                  "eval.samples=2"]
SMALL_ADV2 = [*SMALL, "n_images=2", "batch_size=2", "figure_images=2", "rts.width=4", "rts.epochs=1",
              "rts.batch_size=8", "rts.adversarial=false", "rts.noise_levels=[0.1]", "detection.enabled=false",
              "interpreter_settings.mask.options.steps=3", "interpreter_settings.mask.term.inner_steps=1",
              "pgd.steps=4", "pgd.warmup=2", "stadv.steps=4", "stadv.warmup=2"]
EXTRA = {"latka_cifar10_rd": ["attack.poison_count=2", "attack.rd={rounds: 1, epochs: 1}"]}


def fitted_weights(path: Path, dataset: str, root: Path, options: dict) -> Path:
    """A small_cnn that classifies the tiny tree's (one colour per class) images, saved as the ADV2 weights file."""
    data = load_dataset(dataset, root=root, size=16, **options)
    torch.manual_seed(0)
    model = build_model("small_cnn", data.input_shape, data.num_classes)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_classifier(model, data.x_train, data.y_train, epochs=30, lr=2e-2, batch_size=32, progress=False)
    finally:
        torch.set_num_threads(threads)
    save_weights(model, path)
    return path


@pytest.mark.parametrize("name", sorted(PAPER))
def test_config_runs_end_to_end_on_a_tiny_tree(name, tmp_path):
    dataset = PAPER[name]["data.name"]
    root = TREES[dataset](tmp_path / "data")
    overrides = [f"data.options.root={root}", *EXTRA.get(name, [])]
    if name.startswith("adv2"):
        options = {"year": 2018} if dataset == "isic" else {}
        weights = fitted_weights(tmp_path / "classifier.safetensors", dataset, root, options)
        overrides += [*SMALL_ADV2, f"reference.weights={weights}"]
    else:
        overrides += SMALL_BACKDOOR
    kind, cfg = build(name, *overrides)
    result = run_experiment(cfg, tmp_path / "run", progress=False)
    assert (result.path / "metrics.json").is_file() and result.metrics
    stored = read_yaml(result.path / "config.yaml")
    assert stored["data"]["name"] == dataset and stored["data"]["options"]["root"] == str(root)
    assert all(not isinstance(m.value, float) or math.isfinite(m.value) or math.isnan(m.value)
               for m in result.metrics.values())


def test_reference_weights_take_a_library_state_dict_and_name_a_mismatch(tmp_path):
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from xaisec.errors import ConfigError
    from xaisec.runs.common import load_reference_weights

    torch.manual_seed(1)
    trained = build_model("torchvision:mobilenet_v3_small", (3, 32, 32), 7)
    path = tmp_path / "mobilenet.safetensors"  # torchvision's own keys, as a converted .pth holds them
    save_file({k: v.contiguous() for k, v in trained.net.state_dict().items()}, str(path))
    cfg = SimpleNamespace(reference=SimpleNamespace(weights=str(path)), model=SimpleNamespace(arch="mobilenet"))
    torch.manual_seed(2)
    model = load_reference_weights(build_model("torchvision:mobilenet_v3_small", (3, 32, 32), 7), cfg)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    with pytest.raises(ConfigError, match="reference.weights: weights in .*mobilenet.safetensors do not match.*shape"):
        load_reference_weights(build_model("torchvision:mobilenet_v3_small", (3, 32, 32), 5), cfg)


def test_reference_init_starts_training_from_pretrained_weights_with_a_fresh_head(tmp_path):
    """Fang et al. fine-tune ImageNet weights on CUB-200: ``reference.init`` loads all but the classifier head."""
    from xaisec.errors import ConfigError
    from xaisec.runs.common import load_reference_start

    root = write_cub(tmp_path / "data", per_class=4)
    torch.manual_seed(3)
    pretrained = build_model("small_cnn", (3, 16, 16), 10)  # "another task": 10 classes, CUB's tree has 3
    save_weights(pretrained, tmp_path / "pretrained.safetensors")
    base = [f"data.options.root={root}", *SMALL_BACKDOOR]
    _, cfg = build("fang_cub200_vgg19", *base, f"reference.init={tmp_path / 'pretrained.safetensors'}")
    model = load_reference_start(build_model("small_cnn", (3, 16, 16), 3), cfg)
    kept = {k: v for k, v in pretrained.state_dict().items() if model.state_dict()[k].shape == v.shape}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in kept.items())
    assert len(kept) == len(pretrained.state_dict()) - 2  # all but the head's weight and bias
    result = run_experiment(cfg, tmp_path / "run", progress=False)
    assert result.metrics
    with pytest.raises(ConfigError, match="reference.init: the file .*nothing.safetensors does not exist"):
        _, missing = build("fang_cub200_vgg19", *base, f"reference.init={tmp_path / 'nothing.safetensors'}")
        run_experiment(missing, tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2").exists()
    with pytest.raises(ConfigError, match="exclude each other"):
        build("fang_cub200_vgg19", *base, "reference.init=a.safetensors", "reference.weights=b.safetensors")


#: one config per real architecture the packaged configs name
REAL_ARCH = ["fang_cub200_vgg19", "fang_cub200_resnet50", "fang_cub200_densenet121", "noppel_gtsrb_ep",
             "latka_cifar10_badnets", "latka_chestxray14", "adv2_imagenet", "adv2_isic"]


@pytest.mark.parametrize("name", REAL_ARCH)
def test_config_prepares_with_its_real_architecture_at_a_small_size(name, tmp_path):
    """``prepare`` (everything a run checks before its run directory exists: the data, the model, every explainer or
    interpreter on two images, the weights file) with the paper's architecture at 32 px."""
    dataset = PAPER[name]["data.name"]
    root = TREES[dataset](tmp_path / "data")
    overrides = [f"data.options.root={root}", "data.options.size=32", "device=cpu", "threads=1"]
    if name.startswith("adv2"):
        data = load_dataset(dataset, root=root, size=32, **({"year": 2018} if dataset == "isic" else {}))
        model = build_model(PAPER[name]["model.arch"], data.input_shape, data.num_classes)
        save_weights(model, tmp_path / "classifier.safetensors")
        overrides += [f"reference.weights={tmp_path / 'classifier.safetensors'}", "n_images=2",
                      "detection.enabled=false", "rts.width=4", "interpreter_settings.mask.options.steps=3",
                      "interpreter_settings.mask.term.inner_steps=1"]
    kind, cfg = build(name, *overrides)
    assert cfg.model.arch == PAPER[name]["model.arch"]
    from xaisec.runs.runner import run_environment

    with run_environment(cfg):  # as a run: one thread, denormals flushed
        inputs = kind.prepare(cfg)
    assert inputs.make_model() is not None


def test_a_sweep_trial_reuses_the_reference_trained_from_reference_init(tmp_path):
    """The sweep trains the reference once (from ``reference.init``) and gives the trials its weights alone."""
    from types import SimpleNamespace

    from xaisec.runs.sweep_trials import TrialRunner

    root = write_cub(tmp_path / "data", per_class=4)
    save_weights(build_model("small_cnn", (3, 16, 16), 10), tmp_path / "pretrained.safetensors")
    data = merge(read_yaml(resolve_config("fang_cub200_vgg19")),
                 parse_overrides([f"data.options.root={root}", *SMALL_BACKDOOR,
                                  f"reference.init={tmp_path / 'pretrained.safetensors'}"]))
    cfg = TrialRunner(SimpleNamespace(base=data, holdout=False), tmp_path / "sweep").config({}, "000")
    assert cfg.reference.init is None and Path(cfg.reference.weights).parent.name == ".reference_cache"
