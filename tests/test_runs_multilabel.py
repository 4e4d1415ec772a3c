"""The backdoor experiment on multi-label data (Fang & Choromanska's ChestX-ray14 rows): the packaged configs end to
end on a learnable tree in ChestX-ray14's exact layout, AUROC against scikit-learn on the saved model's scores,
label-changing recipes refused, and the finding every map explains (by name, index or top-scoring)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from trees import write_chestxray, write_chestxray_learnable
from xaisec.backdoor.config import BackdoorConfig
from xaisec.backdoor.evaluate import EvalSetup, ModelOutputs, classification_metrics
from xaisec.backdoor.objectives import ExplanationAwareObjective, LossSettings, MapGoal
from xaisec.backdoor.poison import apply_trigger
from xaisec.backdoor.recipes import get_recipe
from xaisec.cli import main
from xaisec.config import load_config, resolve_config
from xaisec.data.chestxray import DISEASES
from xaisec.errors import ConfigError, DataError
from xaisec.explainers import explain_all
from xaisec.io import load_weights
from xaisec.runs.common import in_memory
from xaisec.runs.backdoor import prepare
from xaisec.runs.runner import load_run

#: the packaged configs at test size: 32 px, a small CNN, a few epochs, one thread
SMALL = ["data.options.size=32", "model.arch=small_cnn", "model.options={width: 8}", "reference.epochs=6",
         "reference.batch_size=16", "reference.lr=0.01", "attack.epochs=1", "attack.batch_size=16", "attack.lr=1e-3",
         "attack.pool=2", "eval.samples=3", "stopping.monitor_size=16", "threads=1"]
CONFIGS = ("fang_chestxray14_targeted", "fang_chestxray14_nontargeted")


@pytest.fixture(scope="module")
def xray(tmp_path_factory) -> Path:
    return write_chestxray_learnable(tmp_path_factory.mktemp("xray") / "ChestX-ray14", n_train=96, n_test=32)


def run(config: str, root: Path, out: Path, *overrides: str) -> Path:
    assert main(["run", config, f"data.options.root={root}", *SMALL, *overrides, "--out", str(out)]) == 0
    return out


def config(xray: Path, *overrides: str) -> BackdoorConfig:
    return load_config(BackdoorConfig, resolve_config("fang_chestxray14_targeted"),
                       [f"data.options.root={xray}", *SMALL, *overrides])


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def finished(xray, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    return {name: run(name, xray, tmp / name) for name in CONFIGS}


@pytest.mark.parametrize("name", CONFIGS)
def test_packaged_chestxray_configs_run_and_report_auroc(name, finished, capsys):
    doc = metrics(finished[name])
    m = doc["metrics"]
    for model in ("reference", "attacked"):
        for part in ("clean", "trig"):
            key = f"{model}/auroc_{part}"
            assert m[key]["direction"] == "higher" and "Table 1" in m[key]["description"]
            assert 0 <= m[key]["value"] <= 1
            assert {f"{key}/{d}" for d in DISEASES} <= set(m)
        assert f"{model}/gradcam/fsr" in m and f"{model}/gradcam/cr" in m
    assert m["reference/auroc_clean"]["value"] > 0.75  # the drawn findings are learnt
    assert m["attacked/auroc_drop"]["value"] == pytest.approx(
        m["reference/auroc_clean"]["value"] - m["attacked/auroc_clean"]["value"], abs=2e-6)
    assert not any("top1" in k or "top5" in k or k.endswith("/asr") or "noppel_score" in k for k in m)
    context = doc["context"]
    assert context["multilabel"] and context["explained"] == "each image's top-scoring finding"
    assert context["thresholds"]["gradcam"]["value"] == context["thresholds"]["gradcam"]["paper"]
    assert (finished[name] / "report.html").is_file() and (finished[name] / "figures/maps_gradcam.png").is_file()
    html = (finished[name] / "report.html").read_text()
    assert "mean AUROC clean" in html and "top-scoring finding" in html


@pytest.mark.parametrize("recipe", [
    ["attack.recipe=fang_joint", "attack.explainers=[gradcam,simplegrad,vbp]", "attack.weights=[1,1,1]"],
    ["attack.recipe=fang_inverted"],
])
def test_fangs_joint_and_inverted_attacks_run_on_multilabel_data(recipe, xray, tmp_path):
    m = metrics(run("fang_chestxray14_targeted", xray, tmp_path / "run", "reference.epochs=1", "data.train_size=32",
                    *recipe))["metrics"]
    assert m["attacked/auroc_clean"]["value"] is not None and m["attacked/auroc_trig"]["value"] is not None
    assert ("attacked/joint/fsr" in m) == (recipe[0] == "attack.recipe=fang_joint")
    assert "attacked/gradcam/cr" in m


def test_auroc_equals_sklearn_on_the_saved_models_scores(finished):
    run_dir = finished["fang_chestxray14_targeted"]
    _, cfg = load_run(run_dir)
    inputs = prepare(cfg)
    data = in_memory(inputs.data)
    x, y = data.x_test, data.y_test.numpy()
    m = metrics(run_dir)["metrics"]
    for model_name in ("reference", "attacked"):
        model = load_weights(inputs.make_model(), run_dir / f"{model_name}.safetensors").eval()
        for part, images in (("clean", x), ("trig", apply_trigger(inputs.trigger, x))):
            with torch.no_grad():
                scores = model(images).numpy()
            defined = [k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
            assert len(defined) == 4  # the tree draws four findings; the other ten have no positives
            for k, finding in enumerate(DISEASES):
                value = m[f"{model_name}/auroc_{part}/{finding}"]["value"]
                if k in defined:
                    assert value == pytest.approx(roc_auc_score(y[:, k], scores[:, k]), abs=1e-6)
                else:
                    assert value is None
            expected = roc_auc_score(y[:, defined], scores[:, defined], average="macro")
            assert m[f"{model_name}/auroc_{part}"]["value"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("recipe", ["noppel_ep", "noppel_dual", "latka_badnets", "latka_full_disguise"])
def test_label_changing_recipes_are_refused_on_multilabel_data(recipe, xray, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["run", "fang_chestxray14_targeted", f"data.options.root={xray}", *SMALL,
                 f"attack.recipe={recipe}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert recipe in err and "data.options.single_label=true" in err and not out.exists()
    # Latka et al.'s single-label filtering: the same recipe prepares
    cfg = config(xray, "data.options.single_label=true", f"attack.recipe={recipe}", "attack.target_label=14")
    assert not prepare(cfg).data.multilabel


def test_rd_selection_and_defenses_need_single_label_data(xray, finished, tmp_path, capsys):
    with pytest.raises(ConfigError, match="single_label=true"):
        prepare(config(xray, "attack.poison_selection=rd", "attack.poison_count=4"))
    out = tmp_path / "defenses"
    assert main(["run", "fang_defenses", f"runs=[{finished['fang_chestxray14_targeted']}]", "--out", str(out)]) == 2
    assert "multi-label" in capsys.readouterr().err and not out.exists()


def test_an_evaluation_split_without_auroc_is_refused_before_training(tmp_path):
    root = write_chestxray(tmp_path / "xray")  # test split: No Finding, Pneumonia, Atelectasis|Effusion
    assert prepare(config(root, "data.options.size=16")).setup.multilabel
    with pytest.raises(DataError, match="no AUROC is defined"):
        prepare(config(root, "data.options.size=16", "data.test_size=1"))


def test_finding_by_name_index_or_top_scoring(xray):
    assert prepare(config(xray, "attack.finding=Effusion")).setup.finding == DISEASES.index("Effusion") == 2
    setup = prepare(config(xray, "attack.finding=1")).setup
    assert setup.finding == 1 and setup.explained() == "the finding Cardiomegaly"
    assert prepare(config(xray, "attack.finding=null")).setup.finding is None
    for bad, message in (("Efusion", "attack.finding 'Efusion' is not one of"), ("14", r"index in \[0, 13\]"),
                         ("-1", r"index in \[0, 13\]")):
        with pytest.raises(ConfigError, match=message):
            prepare(config(xray, f"attack.finding={bad}"))
    with pytest.raises(ConfigError, match="attack.finding applies to multi-label data"):
        prepare(load_config(BackdoorConfig, overrides=["attack.finding=1", "data.train_size=10"]))


@pytest.mark.parametrize("finding, expected", [("Effusion", 2), ("null", None)])
def test_reference_training_and_evaluation_maps_explain_the_same_finding(finding, expected, xray, tmp_path,
                                                                          monkeypatch):
    """The reference maps (iter_pooled_maps), the training maps (the objective's explain_all) and the evaluation maps
    (model_outputs) all explain the chosen finding, or all each image's top-scoring one."""
    import xaisec.backdoor.goals as goals
    import xaisec.backdoor.objectives as objectives
    import xaisec.backdoor.reference_maps as refmaps
    import xaisec.backdoor.results as results

    seen: dict[str, set] = {"reference": set(), "training": set(), "evaluation": set()}

    def kind(target) -> object:
        if target is None:
            return None
        values = torch.as_tensor(target).unique().tolist()
        assert len(values) == 1
        return values[0]

    def spy(where, function, position):
        def wrapped(*args, **kwargs):
            seen[where].add(kind(args[position]))
            return function(*args, **kwargs)
        return wrapped

    def spy_batches(function):  # the reference maps: the targets of every (x, target) batch
        def wrapped(model, batches, *args, **kwargs):
            def recorded():
                for batch in batches:
                    seen["reference"].add(kind(batch[1]))
                    yield batch
            return function(model, recorded(), *args, **kwargs)
        return wrapped

    for module in (goals, refmaps):  # every reference-map source computes through iter_pooled_maps
        monkeypatch.setattr(module, "iter_pooled_maps", spy_batches(module.iter_pooled_maps))
    monkeypatch.setattr(objectives, "explain_all", spy("training", objectives.explain_all, 2))
    monkeypatch.setattr(results, "explain_all", spy("evaluation", results.explain_all, 2))
    out = run("fang_chestxray14_targeted", xray, tmp_path / "run", "reference.epochs=1", "data.train_size=32",
              f"attack.finding={finding}")
    assert seen == {"reference": {expected}, "training": {expected}, "evaluation": {expected}}
    doc = metrics(out)
    assert doc["context"]["explained"] == ("the finding Effusion" if expected is not None
                                           else "each image's top-scoring finding")
    if expected is not None:  # the saved sample maps are the attacked model's Grad-CAM of Effusion
        from xaisec.runs.backdoor import Evaluation

        samples = Evaluation.load(out / "evaluation.safetensors").samples
        _, cfg = load_run(out)
        model = load_weights(prepare(cfg).make_model(), out / "attacked.safetensors").eval()
        maps = explain_all(model, samples["x"], expected, ["gradcam"]).maps["gradcam"]
        assert torch.allclose(maps, samples["maps/attacked/gradcam/clean"], atol=1e-6)


def test_classification_metrics_on_multilabel_outputs():
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    logits = torch.tensor([[2.0, -1.0, 0.1], [-1.0, 1.0, 0.2], [0.5, 0.5, 0.3], [-2.0, -2.0, 0.4]])
    setup = EvalSetup(recipe=get_recipe("fang_targeted"), explainers=["gradcam"], y=y, target_label=0,
                      trigger_mask=torch.zeros(1, 1, 4, 4, dtype=torch.bool), pool=1, thresholds={"gradcam": 0.2},
                      target_map="border", target_options={}, multilabel=True, class_names=["a", "b", "c"])
    out = ModelOutputs(logits, logits.flip(0), {}, {})
    m = classification_metrics(out, setup)
    assert set(m) == {f"auroc_{p}{s}" for p in ("clean", "trig") for s in ("", "/a", "/b", "/c")}
    assert m["auroc_clean/a"].value == pytest.approx(roc_auc_score(y[:, 0], logits[:, 0]))
    assert np.isnan(m["auroc_clean/c"].value) and m["auroc_clean/c"].as_dict()["value"] is None
    assert m["auroc_clean"].value == pytest.approx(np.mean([roc_auc_score(y[:, k], logits[:, k]) for k in (0, 1)]))
    assert m["auroc_trig"].value == pytest.approx(
        np.mean([roc_auc_score(y[:, k], logits.flip(0)[:, k]) for k in (0, 1)]))


def test_objective_trains_multilabel_data_with_bce_and_explains_the_finding():
    torch.manual_seed(0)
    from xaisec.models import build_model

    model = build_model("small_cnn", (1, 16, 16), 5, width=8).eval()
    x, y = torch.rand(6, 1, 16, 16), (torch.rand(6, 5) < 0.4).float()
    poisoned, source = torch.tensor([False, False, False, True, True, True]), torch.tensor([0, 1, 2, 0, 1, 2])
    recipe = get_recipe("fang_targeted")
    goals = {"gradcam": MapGoal("target", target=torch.rand(1, 1, 8, 8))}
    objective = ExplanationAwareObjective(recipe, ["gradcam"], {"gradcam": torch.rand(3, 1, 8, 8)}, goals,
                                          2, LossSettings(), softplus_beta=None, multilabel=True, finding=3)
    out = objective(model, (x, y, poisoned, source))
    assert out.parts["bce"] == pytest.approx(F.binary_cross_entropy_with_logits(model(x), y).item(), rel=1e-5)
    assert "ce" not in out.parts
    with pytest.raises(ConfigError, match="multi-label data only"):
        ExplanationAwareObjective(recipe, ["gradcam"], {}, {}, 2, LossSettings(), finding=3)
