"""``xaisec audit`` end to end on tiny models, the time budget, and the error messages."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xaisec.audit import AUDIT_CHECKS, DEFAULT_CHECKS, run_audit
from xaisec.audit.runner import reconcile
from xaisec.audit.context import CheckResult
from xaisec.cli import main
from xaisec.data import ImageDataset
from xaisec.io import save_weights
from xaisec.models import build_model


@pytest.fixture(scope="module")
def npz_files(tmp_path_factory, backdoor_target, small_mnist, stamp):
    root = tmp_path_factory.mktemp("audit_data")
    x, y, xt, yt = small_mnist
    np.savez(root / "clean.npz", x=(x[:400].numpy() * 255).round().astype(np.uint8), y=y[:400].numpy(),
             x_test=xt.numpy(), y_test=yt.numpy())
    np.savez(root / "suspects.npz", x=stamp(xt[yt != backdoor_target][:60]).numpy())
    return root


def test_cli_audit_end_to_end(npz_files, tmp_path, capsys, backdoor_target):
    out = tmp_path / "audit"
    code = main(["audit", "--model", "tiny_backdoor:backdoored", "--data", str(npz_files / "clean.npz"),
                 "--suspects", str(npz_files / "suspects.npz"), "--out", str(out), "--budget", "120",
                 "--images", "200"])
    assert code == 0
    report = json.loads((out / "audit.json").read_text())
    assert report["check_order"] == list(DEFAULT_CHECKS) and set(report["checks"]) == set(DEFAULT_CHECKS)
    for name, check in report["checks"].items():
        assert check["verdict"] in ("suspicious", "no evidence", "inconclusive", "info", "skipped")
        assert check["seconds"] >= 0 and check["summary"]
    assert report["checks"]["neural_cleanse"]["evidence"]["suspect_class"] == backdoor_target
    assert report["checks"]["strip"]["verdict"] != "skipped"
    assert report["checks"]["activation_clustering"]["evidence"]["overlap"] in (
        "separable", "partially overlapping", "fully overlapping")
    assert report["verdict"] in ("suspicious", "no evidence") and report["suspects"] == 60
    assert set(report["seconds_per_check"]) == set(DEFAULT_CHECKS)
    html = (out / "report.html").read_text()
    assert "does NOT prove" in html and html.count("data:image/png;base64,") >= 5
    assert "src=\"http" not in html and "<script" not in html  # self-contained
    assert "verdict: " in capsys.readouterr().out


def test_budget_runs_out_and_says_so(npz_files, tmp_path, small_mnist, tiny_model):
    model = tiny_model(False)
    x, y, xt, yt = small_mnist
    data = ImageDataset("tiny", x[:100], y[:100], xt[:100], yt[:100], num_classes=10)
    report = run_audit(model, data, budget=0.5, checks=["accuracy", "neural_cleanse", "rebn"], progress=False,
                       out=tmp_path)
    assert report["checks"]["neural_cleanse"]["verdict"] == "skipped"
    assert "budget" in report["checks"]["neural_cleanse"]["summary"]
    assert (tmp_path / "report.html").is_file()


def test_a_users_own_check_returns_a_finding_and_the_runner_names_and_times_it(small_mnist, tiny_model):
    from xaisec.audit import Finding, register_check, skipped

    @register_check("test_mean_pixel", "Mean pixel of the held-out images", what_it_tests="nothing, a test")
    def mean_pixel(ctx, deadline):
        if ctx.suspects is None:
            return skipped("needs suspects")
        return Finding("info", "mean pixel", {"mean": float(ctx.x_eval.mean())})

    try:
        x, y, xt, yt = small_mnist
        data = ImageDataset("tiny", x[:50], y[:50], xt[:50], yt[:50], num_classes=10)
        report = run_audit(tiny_model(False), data, checks=["test_mean_pixel"], progress=False)
        check = report["checks"]["test_mean_pixel"]
        assert check["title"] == "Mean pixel of the held-out images" and check["verdict"] == "skipped"
        report = run_audit(tiny_model(False), data, checks=["test_mean_pixel"], progress=False, suspects=xt[:5])
        check = report["checks"]["test_mean_pixel"]
        assert check["verdict"] == "info" and check["evidence"]["mean"] == pytest.approx(float(xt[:50].mean()))
        assert check["seconds"] >= 0
    finally:
        AUDIT_CHECKS._entries.pop("test_mean_pixel", None)


def test_reconcile_annotates_neural_cleanse_without_changing_verdicts():
    nc = CheckResult("neural_cleanse", "NC", "suspicious", "flag.", {"flagged_classes": [3]})
    fp = CheckResult("fine_pruning", "FP", "info", "", {"candidates": [3, 8], "removed_classes": []})
    reconcile([nc, fp])
    assert nc.verdict == "suspicious" and "survives fine-pruning" in nc.summary
    nc2 = CheckResult("neural_cleanse", "NC", "suspicious", "flag.", {"flagged_classes": [0]})
    fp2 = CheckResult("fine_pruning", "FP", "suspicious", "", {"candidates": [0], "removed_classes": [0]})
    reconcile([nc2, fp2])
    assert nc2.verdict == "suspicious" and "confirms" in nc2.summary
    quiet = CheckResult("neural_cleanse", "NC", "no evidence", "ok.", {"flagged_classes": []})
    reconcile([quiet, fp])
    assert quiet.summary == "ok."


def _err(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def test_errors_are_clear(npz_files, tmp_path, capsys):
    data = str(npz_files / "clean.npz")
    code, err = _err(["audit", "--model", str(tmp_path / "nope.safetensors"), "--arch", "small_cnn", "--data", data],
                     capsys)
    assert code == 2 and "does not exist" in err
    code, err = _err(["audit", "--model", "x.safetensors", "--arch", "small_cnn", "--data", str(tmp_path / "no.npz")],
                     capsys)
    assert code == 2 and "no.npz does not exist" in err
    code, err = _err(["audit", "--model", "x.safetensors", "--arch", "small_cnn", "--data", "/no/such/folder"], capsys)
    assert code == 2 and "does not exist" in err
    rgb = tmp_path / "rgb.safetensors"  # a 3-channel model against 1-channel digits: the architecture does not match
    save_weights(build_model("small_cnn", (3, 14, 14), 10), rgb)
    code, err = _err(["audit", "--model", str(rgb), "--arch", "small_cnn", "--data", data], capsys)
    assert code == 2 and "do not match" in err and "--arch" in err
    mlp = tmp_path / "mlp.safetensors"  # an MLP for 28x28 inputs against 14x14 data: wrong input size
    save_weights(build_model("mlp", (1, 28, 28), 10), mlp)
    code, err = _err(["audit", "--model", str(mlp), "--arch", "mlp", "--data", data], capsys)
    assert code == 2 and "do not match" in err
    code, err = _err(["audit", "--model", "tiny_backdoor:no_such_function", "--data", data], capsys)
    assert code == 2 and "has no function" in err
    code, err = _err(["audit", "--model", "tiny_backdoor:clean", "--data", data, "--checks", "neural_clense"], capsys)
    assert code == 2 and "neural_cleanse" in err  # a suggestion for the typo
    code, err = _err(["audit", "--model", str(rgb), "--data", data], capsys)
    assert code == 2 and "--arch is needed" in err
    code, err = _err(["audit", "--model", "tiny_backdoor:clean", "--data", data, "--device", "tpu"], capsys)
    assert code == 2 and "device 'tpu'" in err and "'cuda:N'" in err
    if not torch.cuda.is_available():
        code, err = _err(["audit", "--model", "tiny_backdoor:clean", "--data", data, "--device", "cuda"], capsys)
        assert code == 2 and "no usable CUDA GPU" in err


def test_entry_point_with_wrong_input_size(tmp_path, capsys):
    x = np.random.default_rng(0).random((40, 1, 20, 20)).astype(np.float32)
    np.savez(tmp_path / "big.npz", x=x, y=np.arange(40) % 10)
    code, err = _err(["audit", "--model", "tiny_backdoor:mlp_14", "--data", str(tmp_path / "big.npz")], capsys)
    assert code == 2 and "does not accept inputs of shape (1, 20, 20)" in err and "size=" in err


def test_every_default_check_is_registered():
    assert set(DEFAULT_CHECKS) <= set(AUDIT_CHECKS.names())
    assert all(AUDIT_CHECKS.get(n).what_it_tests for n in DEFAULT_CHECKS)


def test_shift_control_separates_a_global_input_shift_from_a_backdoor(backdoor_target, small_mnist, stamp, tiny_model):
    """A clean model handed Moiré-overlaid digits (a shift every model sees) is flagged by STRIP alone, not once the
    suspects are also scored on a clean control; the patch-backdoored model is still flagged on its trigger."""
    from xaisec.triggers import build_trigger

    x, y, xt, yt = small_mnist
    data = ImageDataset("tiny", x, y, xt, yt, num_classes=10)
    moire = build_trigger("moire", darkness=0.0, opacity=0.25)(xt[:100]).detach()
    kwargs = dict(progress=False, fit_images=500, eval_images=300)
    alone = run_audit(tiny_model(False), data, checks=["strip"], suspects=moire, **kwargs)["checks"]["strip"]
    assert alone["verdict"] == "suspicious" and "No shift control" in alone["summary"]
    report = run_audit(tiny_model(False), data, checks=["shift_control", "strip"], suspects=moire, **kwargs)
    control, strip = report["checks"]["shift_control"], report["checks"]["strip"]
    assert control["evidence"]["source"] == "surrogate" and control["evidence"]["control_accuracy"] > 0.5
    assert strip["verdict"] == "no evidence" and "shift of the input distribution" in strip["summary"]
    assert strip["evidence"]["control_detection_rate"] > 0.5  # the clean control flags the overlay too
    patched = stamp(xt[yt != backdoor_target][:100])
    report = run_audit(tiny_model(True), data, checks=["shift_control", "strip"], suspects=patched, **kwargs)
    assert report["checks"]["strip"]["verdict"] == "suspicious"
    assert report["checks"]["strip"]["evidence"]["control_detection_rate"] < 0.2
    assert "shift of the input distribution" in " ".join(report["what_flagged_suspects_mean"])


def test_shift_control_model_is_freshly_initialised_and_refuses_what_it_cannot_reset(tiny_model):
    from torch import nn

    from xaisec.audit.shift_control import fresh_copy

    model = tiny_model(True)
    clone = fresh_copy(model)
    assert clone is not None and not torch.equal(clone.head.weight, model.head.weight)
    assert torch.equal(model.state_dict()["head.weight"], tiny_model(True).state_dict()["head.weight"])  # untouched

    class Scaled(nn.Module):  # a parameter no reset_parameters() reaches: it would keep the untrusted value
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.inner = tiny_model(False)

        def forward(self, x):
            return self.inner(x) * self.scale

    assert fresh_copy(Scaled()) is None


def test_audit_a_run_directory_with_its_own_trigger(tiny_backdoor_runs, tmp_path, capsys):
    """`xaisec audit --run RUN_DIR`: the run's config rebuilds architecture and data; `--suspects trigger` screens
    its triggered test images; wrong combinations are refused before any check runs."""
    from xaisec.cli import main

    run = tiny_backdoor_runs[1]  # latka_badnets: a patch trigger
    out = tmp_path / "audit"
    assert main(["audit", "--run", str(run), "--suspects", "trigger", "--checks", "accuracy,strip",
                 "--images", "40", "--budget", "60", "--out", str(out), "--device", "cpu"]) == 0
    doc = json.loads((out / "audit.json").read_text())
    assert set(doc["checks"]) == {"accuracy", "strip"} and doc["checks"]["strip"]["verdict"] != "skipped"
    capsys.readouterr()
    assert main(["audit", "--run", str(run), "--data", "mnist5k", "--out", str(tmp_path / "x")]) == 2
    assert "--run takes the model" in capsys.readouterr().err
    assert main(["audit", "--run", str(run), "--stage", "nope", "--out", str(tmp_path / "y")]) == 2
    assert "no nope.safetensors" in capsys.readouterr().err
    assert main(["audit", "--out", str(tmp_path / "z")]) == 2
