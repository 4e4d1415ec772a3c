"""The adv2 experiment kind: config validation and a tiny end-to-end run whose outputs are checked independently."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import quadrant_data
from xaisec.cli import main
from xaisec.config import load_config
from xaisec.data import DATASETS, ImageDataset
from xaisec.errors import ConfigError
from xaisec.evasion.config import Adv2Config
from xaisec.experiments import EXPERIMENTS, load_kinds


def _quadrants(seed: int = 0) -> ImageDataset:
    x, y = quadrant_data(320, seed)
    return ImageDataset("quadrants", x[:256], y[:256], x[256:], y[256:], num_classes=4)


if "quadrants_test" not in DATASETS:
    DATASETS.register("quadrants_test")(_quadrants)

TINY = {"dataset": "quadrants_test", "n_images": 6, "batch_size": 3, "figure_images": 2,
        "classifier": {"options": {"width": 8, "batchnorm": False}, "epochs": 20, "lr": 0.01, "batch_size": 32},
        "rts": {"width": 4, "epochs": 1, "batch_size": 64, "noise_levels": [0.1],
                "objective": {"blur_sigma": 2.0, "adv_steps": 1}},
        "interpreter_settings": {"mask": {"options": {"steps": 4, "blur_sigma": 2.0}, "inner_steps": 1}},
        "pgd": {"eps": 0.2, "step": 0.02, "steps": 8, "warmup": 3, "c": 5.0},
        "stadv": {"steps": 6, "warmup": 2, "interpreters": ["cam"], "max_flow": 1.5},
        "detection": {"calibration_images": 20, "squeezers": [["bit_depth", {"bits": 2}], ["median", {"size": 2}]],
                      "adaptive": ["cam"], "ensemble": ["cam", "simplegrad"]}}


def test_config_defaults_overrides_and_errors(tmp_path):
    cfg = load_config(Adv2Config, overrides=["pgd.eps=0.1", "target=benign"])
    assert cfg.pgd.eps == 0.1 and cfg.target == "benign" and cfg.settings("simplegrad").smooth_beta == 10.0
    with pytest.raises(ConfigError, match="interpreters must be among"):
        load_config(Adv2Config, overrides=["interpreters=[gradcm]"])
    with pytest.raises(ConfigError, match="not in interpreters"):
        load_config(Adv2Config, overrides=["interpreters=[cam, gradcam]"])
    with pytest.raises(ConfigError, match="warmup"):
        load_config(Adv2Config, overrides=["pgd.warmup=500"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(Adv2Config, overrides=["pgd.epsilon=0.1"])
    with pytest.raises(ConfigError, match="unknown key 'stps'"):
        load_config(Adv2Config, overrides=["interpreter_settings={mask: {stps: 3}}"]).settings("mask")
    assert "adv2" in load_kinds() and EXPERIMENTS.get("adv2").schema is Adv2Config


def test_shipped_configs_load():
    from importlib.resources import files

    for name in ("adv2_mnist5k.yaml", "adv2_shapes.yaml"):
        cfg = load_config(Adv2Config, files("xaisec") / "configs" / name)
        assert cfg.experiment == "adv2" and len(cfg.interpreters) == 5


@pytest.mark.slow
def test_tiny_run_end_to_end_and_its_inputs_respect_their_constraints(tmp_path):
    config = tmp_path / "adv2_tiny.yaml"
    config.write_text(yaml.safe_dump({"experiment": "adv2", **TINY}))
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 0  # the config-driven CLI path
    run_dir = tmp_path / "run"
    cfg = load_config(Adv2Config, run_dir / "config.yaml")
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("setup", "pgd", "adv2_pgd", "stadv", "adv2_stadv", "transfer", "detection", "rts_adversarial"):
        assert key in metrics, key
    assert set(metrics["adv2_pgd"]) == set(cfg.interpreters)
    assert metrics["setup"]["rts_saver"].startswith("decoder on the classifier's features: features")
    assert set(metrics["transfer"]["l1_vs_target"]["PGD"]) == set(cfg.interpreters)
    fs = metrics["detection"]["feature_squeezing"]
    assert fs["squeezers"] == ["bit_depth_2", "median_2x2"] and "adv2_pgd_adaptive-cam" in fs["rates"]
    assert "adv2_pgd-ensemble" in metrics["detection"]["ensemble"]["rates"]
    assert (run_dir / "report.html").read_text().count("<table>") >= 5
    assert (run_dir / "figures" / "adv2_pgd-cam.png").is_file()
    # independent check of every stored adversarial batch: [0,1] box and L-inf ball (PGD family)
    attacked = load_file(str(run_dir / "attack_set.safetensors"))
    x = _quadrants().x_test[attacked["index"]]
    torch.testing.assert_close(attacked["x"], x)
    assert (attacked["y_target"] != attacked["y"]).all()
    files = list((run_dir / "adv").glob("*.safetensors"))
    assert len(files) == 11  # pgd, 5 x adv2_pgd, stadv, adv2_stadv-cam, adaptive, ensemble, RTS^A
    for path in files:
        x_adv = load_file(str(path))["x"]
        assert x_adv.shape == (6, 1, 12, 12) and x_adv.min() >= 0 and x_adv.max() <= 1, path.name
        if "stadv" not in path.name:
            assert (x_adv - x).abs().max() <= cfg.pgd.eps + 1e-6, path.name
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0 and (run_dir / "report.html").is_file()  # rebuilt from the run dir
    resumed = EXPERIMENTS.get("adv2").runner(cfg, run_dir, resume=True)  # everything cached: fast, same numbers
    again = json.loads((resumed / "metrics.json").read_text())
    assert again["adv2_pgd"]["cam"]["asr"] == metrics["adv2_pgd"]["cam"]["asr"]


@pytest.mark.parametrize("init", ["rts", "scratch"])
def test_adversarial_rts_can_start_from_the_plain_rts(init, tmp_path, monkeypatch):
    import xaisec.evasion.setup as setup_module

    cfg = load_config(Adv2Config, overrides=[f"{k}={json.dumps(v)}" for k, v in TINY.items()]
                      + ["interpreters=[cam, rts]", "stadv.enabled=false", "detection.enabled=false",
                         "detection.adaptive=[rts]", "detection.ensemble=[cam, rts]", f"rts.adversarial_init={init}"])
    setup = setup_module.Adv2Setup(cfg, tmp_path, resume=False)
    monkeypatch.setattr(setup_module, "train_rts", lambda saver, *a, **k: [])  # look at the starting weights only
    start, plain = setup.adversarial_saver().state_dict(), setup.savers["rts"].state_dict()
    same = all(torch.equal(start[k], plain[k]) for k in plain)
    assert same == (init == "rts")
    with pytest.raises(ConfigError, match="adversarial_init"):
        load_config(Adv2Config, overrides=["rts.adversarial_init=warm"])


@pytest.mark.parametrize("encoder", ["classifier", "own"])
def test_rts_encoder_option_picks_the_saver_and_survives_resume(encoder, tmp_path):
    from xaisec.evasion.setup import Adv2Setup
    from xaisec.explainers import FeatureSaliencyNet, SaliencyNet

    cfg = load_config(Adv2Config, overrides=[f"{k}={json.dumps(v)}" for k, v in TINY.items()]
                      + ["interpreters=[rts]", "stadv.enabled=false", "detection.enabled=false",
                         "stadv.interpreters=[rts]", "detection.adaptive=[]", "detection.ensemble=[]",
                         f"rts.encoder={encoder}"])
    saver = Adv2Setup(cfg, tmp_path, resume=False).savers["rts"]
    assert isinstance(saver, FeatureSaliencyNet if encoder == "classifier" else SaliencyNet)
    reloaded = Adv2Setup(cfg, tmp_path, resume=True).savers["rts"]  # from rts.safetensors, metadata says which
    assert type(reloaded) is type(saver)
    assert all(torch.equal(a, b) for a, b in zip(saver.state_dict().values(), reloaded.state_dict().values()))
    with pytest.raises(ConfigError, match="rts.layers"):
        load_config(Adv2Config, overrides=["rts.layers=[features]"])
