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
* ``xaisec audit`` verdicts (model-level checks, then with 200 triggered test inputs as suspects).

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
                             neural_cleanse, pruning_curve, rebn, spectral_signatures, statistics_shift, tv_chambolle)
from xaisec.io import load_weights

log = logging.getLogger("defense_results")
PRUNE_FRACTIONS = [i / 20 for i in range(19)]
TV_WEIGHTS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5]
N_EVAL = 500


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


def nc_index(model: torch.nn.Module, x: torch.Tensor) -> dict:
    r = neural_cleanse(model, x, epochs=120, steps_per_epoch=3, progress=False)
    return {"anomaly_index": r.model_anomaly_index, "flagged": r.flagged, "suspect_class": r.suspect_class,
            "l1_norms": [round(v, 2) for v in r.l1_norms.tolist()]}


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
    data = run.prep.data
    half = N_EVAL // 2
    clean, trig = run.x[:half], run.x_trig[half:]
    out = {}
    with_ref = ExplanationConsistency(model, ("gradcam", "simplegrad", "vbp"), reference=run.reference)
    with_ref.fit(data.x_train[:300])
    ev = with_ref.evaluate(clean, trig)
    no_ref = ExplanationConsistency(model, ("gradcam", "simplegrad", "vbp")).fit(data.x_train[:300])
    ev0 = no_ref.evaluate(clean, trig)
    elementary = {k: v for k, v in ev.items() if k.count("/") >= 2}
    best = max(elementary, key=elementary.get)
    out.update({"disagreement": ev["auroc/disagreement"], "instability": ev["auroc/instability"],
                "reference": ev["auroc/reference"], "combined_no_reference": ev0["auroc/combined"],
                "combined_with_reference": ev["auroc/combined"], "best_elementary": [best, elementary[best]],
                "detection_rate_no_reference": ev0["detection_rate"], "fpr_no_reference": ev0["false_positive_rate"]})
    strip = STRIPDetector(model, n=32, blend="add").fit(data.x_train[:300])
    out["strip"] = auroc(strip.score(clean), strip.score(trig))
    x = torch.cat([clean, trig])
    pred = model(x).argmax(1)
    ss = spectral_signatures(head_inputs(model, x), pred).scores
    out["spectral"] = auroc(ss[:half], ss[half:])
    return out


def audit_verdicts(run: Run, model: torch.nn.Module, with_suspects: bool) -> dict:
    d = run.prep.data
    data = ImageDataset(d.name, d.x_train, d.y_train, d.x_test[N_EVAL:], d.y_test[N_EVAL:], d.num_classes, d.class_names)
    suspects = apply_trigger(run.prep.trigger, d.x_test[N_EVAL:N_EVAL + 200]) if with_suspects else None
    report = run_audit(model, data, suspects=suspects, progress=False)
    return {"verdict": report["verdict"], "checks": {k: v["verdict"] for k, v in report["checks"].items()},
            "seconds": report["seconds_per_check"]}


def evaluate_model(run: Run, model: torch.nn.Module, is_reference: bool) -> dict:
    t0 = time.time()
    res = {"metrics": run.metrics(model)}
    res["neural_cleanse"] = nc_index(model, run.prep.data.x_train[:300])
    res["activation_clustering"] = ac_pairs(run, model)
    res["fine_pruning"] = pruning(run, model)
    res["tv_denoising"] = tv_sweep(run, model)
    repaired = rebn(model, run.prep.data.x_train[:1000])
    res["rebn"] = {"before": res["metrics"], "after": run.metrics(repaired),
                   "max_shift": max(statistics_shift(model, repaired).values())}
    res["detection_auroc"] = detection_aurocs(run, model)
    res["audit"] = audit_verdicts(run, model, with_suspects=False)
    res["audit_with_suspects"] = audit_verdicts(run, model, with_suspects=True)
    res["seconds"] = time.time() - t0
    log.info("%s done in %.0f s", "reference" if is_reference else run.recipe.name, res["seconds"])
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/defense_results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for run_dir in args.runs:
        run = Run(run_dir)
        name = run.recipe.name
        if "reference" not in results:
            results["reference"] = {"recipe": "none (clean reference)", "run": str(run_dir),
                                    **evaluate_model(run, run.reference, True)}
        if name not in results:
            results[name] = {"recipe": name, "run": str(run_dir), "summary": run.recipe.summary,
                             "explainers": run.explainers, "trigger": run.prep.trigger.describe(),
                             **evaluate_model(run, run.attacked, False)}
        path.write_text(json.dumps(results, indent=1, default=float))
    from defense_tables import write_tables  # noqa: E402  (sibling script: tables and figures from results.json)

    write_tables(results, args.out)


if __name__ == "__main__":
    main()
