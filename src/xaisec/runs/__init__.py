"""The experiment layer: the one runner (:mod:`.runner`), run directories (:mod:`.rundir`), checkpoints
(:mod:`.checkpoint`), typed stage artifacts (:mod:`.artifacts`), the shared config sections (:mod:`.schema`) and
the experiment kinds (:mod:`.backdoor`, :mod:`.adv2`, :mod:`.defenses`) and hyperparameter sweeps over them
(:mod:`.sweep`).

>>> from xaisec.runs import run_experiment
>>> from xaisec.config import load_config
>>> from xaisec.backdoor.config import BackdoorConfig
>>> result = run_experiment(load_config(BackdoorConfig, overrides=["attack.epochs=1"]), "runs/demo")
>>> result.metrics["attacked/gradcam/fsr"].value
"""
from .runner import (DEFAULT_KIND, EXPERIMENTS, Experiment, RunContext, RunResult, Stage, build_report, get_kind,
                     load_experiment, load_kinds, load_run, read_metrics, register_experiment, run_experiment)

__all__ = ["DEFAULT_KIND", "EXPERIMENTS", "Experiment", "RunContext", "RunResult", "Stage", "build_report", "get_kind",
           "load_experiment", "load_kinds", "load_run", "read_metrics", "register_experiment", "run_experiment"]
