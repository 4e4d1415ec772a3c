"""The defense results of docs/results_defenses.md, from backdoor-engine run directories (``xaisec run``).

Run: ``python benchmarks/defense_results.py RUN_DIR [RUN_DIR ...] --out docs/defense_results``. Each run directory
holds ``config.yaml``, ``reference.safetensors`` (the clean model) and ``attacked.safetensors``. For the clean
reference model (once) and every attacked model this measures, on the run's held-out split and trigger:

* Neural Cleanse anomaly index (Fang, Figure 4a);
* Activation Clustering of 320 clean + 320 triggered test pairs, last hidden layer, first two principal
  components, 2-means, misclustering rate (Fang, Table 2: < 5% separable, 5-30% partial, > 30% full overlap);
* fine-pruning curves of clean accuracy and of the attack metric (FSR, or ASR for label-changing recipes)
  against the pruned fraction of the last conv block (Fang, Figure 4b);
* TV denoising (Chambolle) sweep: accuracy on clean/triggered inputs, FSR/CR or ASR (Fang, Table 3);
* Re-BN: metrics before/after re-estimating BatchNorm statistics on clean training images;
* explanation consistency, STRIP and Spectral Signatures: AUROC of triggered vs clean test inputs;
* ``xaisec audit`` verdicts, with 200 triggered test inputs as suspects (its Neural Cleanse gives Figure 4a).

Writes ``results.json``, ``tables.md`` and the figures (PNG) into ``--out``. Not a test: takes minutes per model.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from xaisec.audit import run_audit
from xaisec.audit.checks_inputs import head_inputs
from xaisec.backdoor.config import BackdoorConfig
from xaisec.backdoor.experiment import prepare
from xaisec.backdoor.poison import apply_trigger
from xaisec.backdoor.results import collect_metrics, model_outputs
from xaisec.config import load_config
from xaisec.data import ImageDataset
from xaisec.defenses import (ExplanationConsistency, STRIPDetector, activation_clustering, auroc, misclustering,
                             pruning_curve, rebn, spectral_signatures, statistics_shift, tv_chambolle)
from xaisec.io import load_weights

log = logging.getLogger("defense_results")
PRUNE_FRACTIONS = [i / 10 for i in range(10)]
TV_WEIGHTS = [0.0, 0.05, 0.1, 0.2, 0.4]
N_EVAL = 400  # held-out test images for the Fang-shaped measurements; the audit uses the rest of the test split


class Run:
    """One engine run: its prepared config, the reference and attacked models, test inputs with/without trigger."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.cfg = load_config(BackdoorConfig, run_dir / "config.yaml")
        self.prep = prepare(self.cfg)
        self.recipe = self.prep.recipe
        self.reference = load_weights(self.prep.make_model(), run_dir / "reference.safetensors").eval()
        self.attacked = load_weights(self.prep.make_model(), run_dir / "attacked.safetensors").eval()
        data = self.prep.data
        self.x, self.y = data.x_test[:N_EVAL], data.y_test[:N_EVAL]
        self.x_trig = apply_trigger(self.prep.trigger, self.x)
        self.setup = self.prep.setup
        self.setup.y = self.y
        self.explainers = self.setup.explainers
        self.ref_out = model_outputs(self.reference, self.x, self.x_trig, self.explainers)

    def metrics(self, model: torch.nn.Module, x: torch.Tensor | None = None, x_trig: torch.Tensor | None = None) -> dict:
        """Top-1 clean/triggered, ASR (label-changing recipes), FSR and CR averaged over the attacked explainers."""
        out = model_outputs(model, self.x if x is None else x, self.x_trig if x_trig is None else x_trig, self.explainers)
        m = collect_metrics({"reference": self.ref_out, "attacked": out}, self.setup)
        res = {"acc_clean": m["attacked/top1_clean"].value, "acc_trig": m["attacked/top1_trig"].value}
        if "attacked/asr" in m:
            res["asr"] = m["attacked/asr"].value
        for key in ("fsr", "cr"):
            vals = [m[f"attacked/{e}/{key}"].value for e in self.explainers if f"attacked/{e}/{key}" in m]
            if vals:
                res[key] = sum(vals) / len(vals)
        return res

    def attack_metric(self) -> str:
        return "fsr" if self.recipe.changes_maps else ("asr" if self.recipe.changes_labels else "fsr")


def ac_pairs(run: Run, model: torch.nn.Module) -> dict:
    """Fang's Table 2 protocol: 320 clean/triggered pairs, PCA to 2 dims, one 2-means split, misclustering."""
    n = 320
    x = torch.cat([run.x[:n], run.x_trig[:n]])
    truth = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
    act = head_inputs(model, x)
    res = activation_clustering(act, torch.zeros(2 * n, dtype=torch.long), reduce="pca", n_dims=2)
    mis = misclustering(res, torch.zeros(2 * n, dtype=torch.long), truth)
    return {"misclustering": mis.label_agnostic_rate, "verdict": mis.verdict}


def pruning(run: Run, model: torch.nn.Module) -> dict:
    key = run.attack_metric()
    metric = {key: lambda m: run.metrics(m)[key]} if key in run.metrics(model) else {}
    curve = pruning_curve(model, run.x, run.y, fractions=PRUNE_FRACTIONS, metrics=metric,
                          x_rank=run.prep.data.x_train[:500], progress=False)
    return {"fractions": curve.fractions, "accuracy": curve.clean_accuracy, "metric": key,
            "values": curve.metrics.get(key), "fraction_accuracy_kept": curve.fraction_at_accuracy_drop(0.05)}


def tv_sweep(run: Run, model: torch.nn.Module) -> list[dict]:
    rows = []
    for w in TV_WEIGHTS:
        x = run.x if w == 0 else tv_chambolle(run.x, weight=w)
        xt = run.x_trig if w == 0 else tv_chambolle(run.x_trig, weight=w)
        rows.append({"weight": w, **run.metrics(model, x, xt)})
    return rows


def detection_aurocs(run: Run, model: torch.nn.Module) -> dict:
    """AUROC of triggered vs clean test inputs (disjoint halves) for each explanation-consistency score (calibrated
    on clean training images), with and without the trusted reference model, STRIP and Spectral Signatures."""
    data = run.prep.data
    half = N_EVAL // 2
    clean, trig = run.x[:half], run.x_trig[half:]
    det = ExplanationConsistency(model, ("gradcam", "simplegrad", "vbp"), reference=run.reference)
    det.fit(data.x_train[:300])
    dc, dt = det.details(clean), det.details(trig)
    cal = det.calibration

    def combined(d: dict, names: list[str], two_sided: bool = False) -> torch.Tensor:
        z = torch.stack([(d[n] - cal.center[n]) / cal.scale[n] for n in names])
        return (z.abs() if two_sided else z).amax(0)

    elementary = {k: auroc(dc[k], dt[k]) for k in dc if k.count("/") >= 1}
    best = max(elementary, key=elementary.get)
    no_ref = ["disagreement", "instability"]
    thr = float(torch.quantile(combined(det.details(data.x_train[300:600]), no_ref), 0.95))
    out = {"disagreement": auroc(dc["disagreement"], dt["disagreement"]),
           "instability": auroc(dc["instability"], dt["instability"]),
           "reference": auroc(dc["reference"], dt["reference"]),
           "combined_no_reference": auroc(combined(dc, no_ref), combined(dt, no_ref)),
           "combined_with_reference": auroc(combined(dc, det.component_names), combined(dt, det.component_names)),
           "combined_two_sided_no_reference": auroc(combined(dc, no_ref, True), combined(dt, no_ref, True)),
           "best_elementary": [best, elementary[best]], "elementary": elementary,
           "detection_rate_no_reference": float((combined(dt, no_ref) > thr).float().mean()),
           "fpr_no_reference": float((combined(dc, no_ref) > thr).float().mean())}
    strip = STRIPDetector(model, n=32, blend="add").fit(data.x_train[:300])
    out["strip"] = auroc(strip.score(clean), strip.score(trig))
    x = torch.cat([clean, trig])
    ss = spectral_signatures(head_inputs(model, x), model(x).argmax(1)).scores
    out["spectral"] = auroc(ss[:half], ss[half:])
    return out


def audit(run: Run, model: torch.nn.Module) -> dict:
    """``xaisec audit`` on the rest of the test split, with 200 of its images triggered as suspects."""
    d = run.prep.data
    data = ImageDataset(d.name, d.x_train, d.y_train, d.x_test[N_EVAL:], d.y_test[N_EVAL:], d.num_classes, d.class_names)
    suspects = apply_trigger(run.prep.trigger, d.x_test[N_EVAL:N_EVAL + 200])
    report = run_audit(model, data, suspects=suspects, progress=False)
    checks = report["checks"]
    model_level = [n for n in ("neural_cleanse", "fine_pruning", "rebn") if checks[n]["verdict"] == "suspicious"]
    return {"verdict": report["verdict"], "checks": {k: v["verdict"] for k, v in checks.items()},
            "model_level_verdict": "suspicious" if model_level else "no evidence", "model_level_suspicious": model_level,
            "neural_cleanse": checks["neural_cleanse"]["evidence"], "seconds": report["seconds_per_check"]}


def trigger_figure(run: Run, model: torch.nn.Module, path: Path) -> None:
    """The reverse-engineered triggers of every class (Neural Cleanse, as in the audit) as a PNG."""
    import base64

    from xaisec.audit.figures import triggers_figure
    from xaisec.defenses import neural_cleanse

    r = neural_cleanse(model, run.prep.data.x_train[:300], epochs=120, steps_per_epoch=3, progress=False)
    png = triggers_figure(r.masks, r.patterns, r.l1_norms.tolist(), r.anomaly_index.tolist(),
                          list(range(len(r.l1_norms))), run.prep.data.class_names, r.flagged)
    path.write_bytes(base64.b64decode(png))


def nc_repeats(run: Run, model: torch.nn.Module, repeats: int) -> list[list]:
    """Neural Cleanse's anomaly index and flagged classes on ``repeats`` disjoint sets of 300 training images."""
    from xaisec.defenses import neural_cleanse

    x = run.prep.data.x_train
    out = []
    for i in range(repeats):
        r = neural_cleanse(model, x[300 * i:300 * (i + 1)], epochs=120, steps_per_epoch=3, seed=i, progress=False)
        out.append([r.model_anomaly_index, r.flagged])
    return out


def evaluate_model(run: Run, model: torch.nn.Module, is_reference: bool) -> dict:
    t0 = time.time()
    res = {"metrics": run.metrics(model)}
    res["audit"] = audit(run, model)
    nc = res["audit"]["neural_cleanse"]
    res["neural_cleanse"] = {k: nc.get(k) for k in ("model_anomaly_index", "flagged_classes", "suspect_class", "l1_norms")}
    res["activation_clustering"] = ac_pairs(run, model)
    res["fine_pruning"] = pruning(run, model)
    res["tv_denoising"] = tv_sweep(run, model)
    repaired = rebn(model, run.prep.data.x_train[:1000])
    res["rebn"] = {"before": res["metrics"], "after": run.metrics(repaired),
                   "max_shift": max(statistics_shift(model, repaired).values())}
    res["detection_auroc"] = detection_aurocs(run, model)
    res["seconds"] = time.time() - t0
    log.info("%s done in %.0f s", "reference" if is_reference else run.recipe.name, res["seconds"])
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/defense_results"))
    parser.add_argument("--nc-repeats", type=int, default=3, help="Neural Cleanse runs for the stability table")
    parser.add_argument("--nc-models", nargs="*", default=["reference/small_cnn", "reference/vgg_small", "latka_badnets", "fang_targeted"],
                        help="models whose Neural Cleanse stability is measured")
    parser.add_argument("--trigger-figures", nargs="*", default=["reference/vgg_small", "latka_badnets"],
                        help="models whose reverse-engineered triggers are drawn")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for run_dir in args.runs:
        run = Run(run_dir)
        name, arch = run_dir.name, run.cfg.model.arch  # the run directory names the model
        ref_key = f"reference/{arch}"  # one clean reference per architecture, measured with its first run's trigger
        if ref_key not in results:
            results[ref_key] = {"recipe": "none (clean reference)", "run": str(run_dir), "arch": arch,
                                "trigger": run.prep.trigger.describe(), **evaluate_model(run, run.reference, True)}
        if name not in results:
            results[name] = {"recipe": run.recipe.name, "run": str(run_dir), "arch": arch,
                             "summary": run.recipe.summary, "explainers": run.explainers,
                             "trigger": run.prep.trigger.describe(), **evaluate_model(run, run.attacked, False)}
        path.write_text(json.dumps(results, indent=1, default=float))
        for key, model in ((ref_key, run.reference), (name, run.attacked)):
            png = args.out / f"nc_triggers_{key.replace('/', '_')}.png"
            if key in args.trigger_figures and not png.is_file():
                trigger_figure(run, model, png)
            if key in args.nc_models and "nc_repeats" not in results[key]:
                results[key]["nc_repeats"] = nc_repeats(run, model, args.nc_repeats)
                path.write_text(json.dumps(results, indent=1, default=float))
    from defense_tables import write_tables  # noqa: E402  (sibling script: tables and figures from results.json)

    write_tables(results, args.out)


if __name__ == "__main__":
    main()
