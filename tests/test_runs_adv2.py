"""The adv2 experiment kind (xaisec.runs.adv2): config validation, a tiny run end to end whose outputs are checked
independently, resume after a kill inside the pgd stage, the report rebuilt from the run directory alone, and the
RTS savers (kind, reload, adversarial initialisation)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from run_dirs import copy_without
from xaisec.cli import main
from xaisec.config import load_config, read_yaml, resolve_config
from xaisec.data import load_dataset
from xaisec.errors import ConfigError
from xaisec.evasion.config import Adv2Config
from xaisec.runs import RunContext, get_kind, load_experiment, run_experiment
from xaisec.runs import adv2
from xaisec.runs.common import train_reference
from xaisec.runs.rundir import RunDir

TINY = {"experiment": "adv2", "model": {"options": {"width": 8, "batchnorm": False}},
        "reference": {"epochs": 20, "lr": 0.01, "batch_size": 32},
        "n_images": 6, "batch_size": 3, "figure_images": 2,
        "rts": {"width": 4, "epochs": 1, "batch_size": 64, "noise_levels": [0.1],
                "objective": {"blur_sigma": 2.0, "adv_steps": 1}},
        "interpreter_settings": {"mask": {"options": {"steps": 4, "blur_sigma": 2.0}, "term": {"inner_steps": 1}}},
        "pgd": {"eps": 0.2, "step": 0.02, "steps": 8, "warmup": 3, "c": 5.0},
        "stadv": {"steps": 6, "warmup": 2, "interpreters": ["cam"], "max_flow": 1.5},
        "detection": {"calibration_images": 20, "squeezers": [["bit_depth", {"bits": 2}], ["median", {"size": 2}]],
                      "adaptive": ["cam"], "ensemble": ["cam", "simplegrad"]}}


def tiny(dataset: str, *overrides: str) -> Adv2Config:
    return load_config(Adv2Config, data={**TINY, "data": {"name": dataset}}, overrides=overrides)


def test_config_defaults_overrides_and_errors():
    cfg = load_config(Adv2Config, overrides=["pgd.eps=0.1", "target=benign"])
    assert cfg.pgd.eps == 0.1 and cfg.target == "benign" and cfg.settings("simplegrad").smooth_beta == 10.0
    assert cfg.settings("mask").c == 100.0 and cfg.settings("rts").norm == "none" and cfg.name == "adv2"
    assert cfg.reference.epochs == 15 and cfg.saver_interpreters() == ["rts"]
    for override, message in [("interpreters=[gradcm]", "did you mean 'gradcam'"),
                              ("interpreters=[vbp]", "not an explainer ADV2 can attack"),
                              ("interpreters=[cam, gradcam]", "not in interpreters"),
                              ("pgd.warmup=500", "warmup"),
                              ("pgd.epsilon=0.1", "unknown key"),
                              ("pgd.eps=.nan", "finite"),
                              ("pgd.steps=1000000000", "pgd.steps"),
                              ("n_images=0", "n_images"),
                              ("interpreter_settings={mask: {options: {stps: 3}}}", "Did you mean 'steps'"),
                              ("interpreter_settings={rts: {options: {saver: x}}}", "no option 'saver'"),
                              ("interpreter_settings={mask: {term: {inner_stps: 3}}}", "Did you mean 'inner_steps'"),
                              ("interpreter_settings={cam: {term: {inner_steps: 3}}}", "takes no options"),
                              ("interpreter_settings={cam: {c: 1e9}}", "c must be"),
                              ("detection.squeezers=[[blur, {}]]", "detection.squeezers"),
                              ("rts.adversarial_init=warm", "adversarial_init"),
                              ("rts.layers=[features]", "rts.layers")]:
        with pytest.raises(ConfigError, match=message):
            load_config(Adv2Config, overrides=[override])
    assert get_kind("adv2").schema is Adv2Config


def test_the_resolved_config_lists_every_interpreters_settings_and_loads_again():
    cfg = load_config(Adv2Config, overrides=["interpreters=[cam, mask]", "interpreter_settings={mask: {c: 50}}",
                                             "detection.adaptive=[mask]", "detection.ensemble=[]"])
    assert set(cfg.interpreter_settings) == {"cam", "mask"} and cfg.interpreter_settings["mask"]["norm"] == "none"
    again = load_config(Adv2Config, data=yaml.safe_load(yaml.safe_dump(dataclasses.asdict(cfg))))
    assert again == cfg and again.settings("mask").c == 50.0


def test_shipped_configs_load():
    for name in ("adv2_mnist5k", "adv2_shapes"):
        kind, cfg = load_experiment(read_yaml(resolve_config(name)))
        assert kind.name == "adv2" and len(cfg.interpreters) == 5 and cfg.settings("mask").term == {"inner_steps": 5}


def test_explainers_declare_how_adv2_attacks_them():
    from xaisec.evasion import InterpreterTerm, MaskTerm
    from xaisec.evasion.config import attackable_interpreters, explainer_class

    assert attackable_interpreters() == ["cam", "gradcam", "mask", "rts", "simplegrad"]
    assert explainer_class("mask").attack_term_type() is MaskTerm
    assert explainer_class("cam").attack_term_type() is InterpreterTerm
    assert explainer_class("rts").requires == ("saver",) and explainer_class("cam").requires == ()


def test_prepare_rejects_what_does_not_fit_before_creating_the_run(quadrants_dataset, tmp_path):
    cfg = tiny(quadrants_dataset, "interpreters=[gradcam]", "stadv.enabled=false", "detection.enabled=false",
               "interpreter_settings={gradcam: {options: {layer: nosuch}}}")
    with pytest.raises(ConfigError, match="interpreter 'gradcam' does not fit"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="exceed the 64 test images"):
        run_experiment(tiny(quadrants_dataset, "n_images=60"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, quadrants_dataset) -> Path:
    tmp = tmp_path_factory.mktemp("adv2")
    config = tmp / "adv2_tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data": {"name": quadrants_dataset}}))
    assert main(["run", str(config), "--out", str(tmp / "run")]) == 0  # the config-driven CLI path
    return tmp / "run"


STAGES = ("reference", "savers", "attack_set", "pgd", "stadv", "detection", "savers_adversarial", "rts_adversarial")


def test_tiny_run_writes_flat_metrics_and_inputs_that_respect_their_constraints(finished_run, quadrants_dataset):
    run = finished_run
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    for stage in STAGES:
        assert (run / f"{stage}.safetensors").is_file(), stage
    doc = json.loads((run / "metrics.json").read_text())
    records = doc["metrics"]
    assert all(set(r) <= {"value", "direction", "description", "std"} and r["direction"] in ("higher", "lower", "none")
               and isinstance(r["description"], str) and (r["value"] is None or isinstance(r["value"], float))
               for r in records.values())
    for key, direction in [("pgd/asr", "higher"), ("adv2_pgd/cam/asr", "higher"), ("adv2_pgd/mask/vs_target/l1", "lower"),
                           ("adv2_pgd/rts/vs_target/iou@0.2", "higher"), ("pgd/gradcam/vs_benign/l1", "none"),
                           ("adv2_stadv/cam/vs_target/l2", "lower"), ("transfer/l1_vs_target/PGD/simplegrad", "lower"),
                           ("transfer/l1_vs_target/ADV2->cam/rts", "lower"),
                           ("detection/feature_squeezing/rates/adv2_pgd_adaptive-cam/bit_depth_2", "lower"),
                           ("detection/feature_squeezing/rates/benign/joint", "none"),
                           ("detection/adaptive/cam/asr", "higher"), ("detection/ensemble/rates/adv2_pgd-ensemble", "lower"),
                           ("detection/ensemble/joint/simplegrad/vs_target/l1", "lower"),
                           ("rts_adversarial/rts/adversarial/vs_target/l1", "lower"),
                           ("rts_adversarial/rts/crafted_against_plain/vs_target/l1", "lower"),
                           ("rts_adversarial/rts/noise/normal_0.1/rts_adv", "none")]:
        assert records[key]["direction"] == direction, key
    context = doc["context"]
    assert context["rts_saver"].startswith("decoder on the classifier's features: features")
    assert context["interpreters"] == ["cam", "gradcam", "mask", "rts", "simplegrad"] and context["test_accuracy"] > 0.5
    assert set(context["timing_s"]) >= {"pgd", "adv2_pgd-mask", "stadv", "adv2_pgd-ensemble", "adv2_pgd-rts_adv"}
    # independent check of every stored adversarial batch: [0,1] box and L-inf ball (PGD family)
    s = adv2.AttackSet.load(run / "attack_set.safetensors")
    torch.testing.assert_close(s.x, load_dataset(quadrants_dataset).x_test[s.index])
    assert (s.y_target != s.y).all() and set(s.benign) == set(s.targets) == set(context["interpreters"])
    attacks = {k: v for stage in ("pgd", "stadv", "detection", "rts_adversarial")
               for k, v in adv2.Attacks.load(run / f"{stage}.safetensors").x_adv.items()}
    assert len(attacks) == 11  # pgd, 5 x adv2_pgd, stadv, adv2_stadv-cam, adaptive, ensemble, RTS^A
    assert len(list((run / "cache").rglob("*.safetensors"))) == 11
    for key, x_adv in attacks.items():
        assert x_adv.shape == (6, 1, 12, 12) and x_adv.min() >= 0 and x_adv.max() <= 1, key
        if "stadv" not in key:
            assert (x_adv - s.x).abs().max() <= 0.2 + 1e-6, key
    pgd = adv2.Attacks.load(run / "pgd.safetensors")
    assert pgd.maps["adv2_pgd-cam"]["cam"].shape == (2, 1, 12, 12) and set(pgd.maps["pgd"]) == set(s.benign)
    html = (run / "report.html").read_text()
    assert html.count("<table>") >= 8 and "papers/" not in html and "Interpretable Deep Learning under Fire" in html
    assert main(["run", "--resume", str(run)]) == 0  # finished: nothing to do


def test_report_is_rebuilt_from_the_run_directory_alone(finished_run, tmp_path, capsys):
    run = copy_without(finished_run, tmp_path / "copy", ("reference", "savers", "savers_adversarial", "detection"))
    assert main(["report", str(run)]) == 0
    for name in ("adv2_pgd-cam", "adv2_pgd-mask", "adv2_stadv-cam", "rts_vs_rts_adv", "iou_vs_target", "l1_vs_target"):
        assert (run / "figures" / f"{name}.png").is_file(), name
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 9 and "https://" not in html


class Killed(Exception):
    pass


def test_resume_after_a_kill_inside_the_pgd_stage_reuses_the_finished_attacks(quadrants_dataset, tmp_path, monkeypatch):
    overrides = ("interpreters=[cam, simplegrad]", "stadv.enabled=false", "detection.enabled=false")
    cfg = tiny(quadrants_dataset, *overrides)
    real = RunContext.cached

    def killed_after_the_first_adv2_attack(self, key, make):
        value = real(self, key, make)
        if key == "adv2_pgd-cam":
            raise Killed
        return value

    monkeypatch.setattr(RunContext, "cached", killed_after_the_first_adv2_attack)
    with pytest.raises(Killed):
        run_experiment(cfg, tmp_path / "a", progress=False)
    cache = tmp_path / "a" / "cache" / "pgd"
    assert sorted(p.name for p in cache.iterdir()) == ["adv2_pgd-cam.safetensors", "pgd.safetensors"]
    assert not (tmp_path / "a" / "pgd.safetensors").exists()
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    computed = []

    def recording(self, key, make):
        return real(self, key, lambda: computed.append(key) or make())

    monkeypatch.setattr(RunContext, "cached", recording)
    resumed = run_experiment(cfg, tmp_path / "a", resume=True, progress=False)
    assert computed == ["adv2_pgd-simplegrad"]  # the finished attacks came from the cache
    assert all((cache / name).stat().st_mtime_ns == t for name, t in before.items())
    fresh = run_experiment(tiny(quadrants_dataset, *overrides), tmp_path / "b", progress=False)
    assert {k: m.value for k, m in resumed.metrics.items()} == {k: m.value for k, m in fresh.metrics.items()}


def _context(cfg: Adv2Config, path: Path) -> RunContext:
    path.mkdir()
    ctx = RunContext(cfg, adv2.prepare(cfg), RunDir(path), progress=False)
    ctx.results["reference"] = train_reference(ctx)
    return ctx


@pytest.mark.parametrize("init", ["rts", "scratch"])
def test_adversarial_rts_can_start_from_the_plain_rts(init, quadrants_dataset, tmp_path, monkeypatch):
    from xaisec.runs.checkpoint import TrainingStage

    cfg = tiny(quadrants_dataset, "interpreters=[cam, rts]", "stadv.enabled=false", "detection.enabled=false",
               f"rts.adversarial_init={init}")
    ctx = _context(cfg, tmp_path / "run")
    ctx.results["savers"] = adv2.savers(ctx)
    monkeypatch.setattr(TrainingStage, "train", lambda self, *a, **k: [])  # look at the starting weights only
    start, plain = adv2.savers_adversarial(ctx).weights, ctx["savers"].weights
    assert all(torch.equal(start[k], plain[k]) for k in plain) == (init == "rts")


@pytest.mark.parametrize("encoder", ["classifier", "own"])
def test_rts_encoder_option_picks_the_saver_and_survives_reloading(encoder, quadrants_dataset, tmp_path):
    from xaisec.explainers import FeatureSaliencyNet, SaliencyNet

    cfg = tiny(quadrants_dataset, "interpreters=[rts]", "stadv.enabled=false", "detection.enabled=false",
               "detection.adaptive=[]", "detection.ensemble=[]", f"rts.encoder={encoder}")
    ctx = _context(cfg, tmp_path / "run")
    trained = adv2.savers(ctx)
    saver = trained.saver()
    assert isinstance(saver, FeatureSaliencyNet if encoder == "classifier" else SaliencyNet)
    trained.save(tmp_path / "savers.safetensors")  # what a resumed run reloads
    reloaded = adv2.SaverModel.load(tmp_path / "savers.safetensors").saver()
    assert type(reloaded) is type(saver) and reloaded.width == 4
    assert all(torch.equal(a, b) for a, b in zip(saver.state_dict().values(), reloaded.state_dict().values()))


def test_saver_training_resumed_after_a_kill_equals_an_uninterrupted_one(quadrants_dataset, tmp_path, monkeypatch):
    from xaisec.runs import checkpoint

    cfg = tiny(quadrants_dataset, "interpreters=[rts]", "stadv.enabled=false", "detection.enabled=false",
               "rts.epochs=2")
    whole = adv2.savers(_context(cfg, tmp_path / "a"))
    real = checkpoint.save_checkpoint

    def dies_after_the_first_epoch(path, model, optimizer, state):
        real(path, model, optimizer, state)
        raise Killed

    ctx = _context(cfg, tmp_path / "b")
    monkeypatch.setattr(checkpoint, "save_checkpoint", dies_after_the_first_epoch)
    with pytest.raises(Killed):
        adv2.savers(ctx)
    monkeypatch.setattr(checkpoint, "save_checkpoint", real)
    resumed = adv2.savers(ctx)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert all(torch.equal(whole.weights[k], resumed.weights[k]) for k in whole.weights)


def test_rts_encoder_weight_gives_the_rts_term_adv2s_encoder_loss(quadrants_dataset, tmp_path):
    from xaisec.evasion.config import term_options
    from xaisec.evasion.objective import RTSTerm
    from xaisec.explainers import encoder_prototypes
    from xaisec.runs.adv2_tools import attack_term

    assert "encoder_weight" not in term_options("rts") and "prototypes" not in term_options("rts")
    with pytest.raises(ConfigError, match="rts.encoder_weight"):
        tiny(quadrants_dataset, "rts.encoder_weight=-1")
    cfg = tiny(quadrants_dataset, "interpreters=[rts]", "stadv.enabled=false", "detection.enabled=false",
               "detection.adaptive=[]", "detection.ensemble=[]", "rts.encoder_weight=0.5")
    ctx = _context(cfg, tmp_path / "run")
    ctx.results["savers"] = adv2.savers(ctx)
    b = adv2.Bench(ctx)
    data, explainer = ctx.inputs.data, b.explainers["rts"]
    term = b.term("rts")
    assert isinstance(term, RTSTerm) and term.encoder_weight == 0.5
    expected = encoder_prototypes(explainer.saver, b.model, data.x_train, data.y_train, data.num_classes)
    assert term.prototypes.shape[0] == data.num_classes and torch.allclose(term.prototypes, expected)
    plain = attack_term(dataclasses.replace(cfg, rts=dataclasses.replace(cfg.rts, encoder_weight=0.0)), "rts",
                        explainer, b.posts["rts"])  # today's term: no encoder loss, no data needed
    assert isinstance(plain, RTSTerm) and plain.encoder_weight == 0 and plain.prototypes is None
    x, t = data.x_test[:3], torch.tensor([1, 2, 3])
    maps = b.posts["rts"](torch.rand(3, 1, *x.shape[-2:]))
    extra = term.loss(x, t, maps)[1] - plain.loss(x, t, maps)[1]
    assert torch.allclose(extra, 0.5 * term.encoder_loss(x, t)) and (extra > 0).all()
    with pytest.raises(ConfigError, match="training data"):
        attack_term(cfg, "rts", explainer, b.posts["rts"])
