"""Running a sweep's workers: :func:`run_worker` runs trials until the sweep has its size; :func:`launch` starts
workers in this process, in spawned processes, or as a submitit job array (locally or on Slurm)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..errors import ConfigError
from .sweep_spec import SweepSpec
from .sweep_trials import TrialRunner, finished_trials, open_study, waiting_trials

log = logging.getLogger(__name__)

LAUNCHERS = ("process", "submitit-local", "slurm")


def _stop_when_done(target: int):
    """Stop this worker once the finished trials and those other workers are running reach ``target``."""
    from optuna.trial import TrialState

    def callback(study, trial) -> None:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if len(finished_trials(study)) + len(running) >= target:
            study.stop()

    return callback


def run_worker(sweep_dir: str | Path, worker: int = 0) -> int:
    """One worker: run trials of the sweep in ``sweep_dir`` until it has its size. Importable by path for
    process pools and submitit jobs. Returns the number of trials this worker ran."""
    sweep_dir = Path(sweep_dir)
    spec = SweepSpec.read(sweep_dir)
    study = open_study(spec, sweep_dir, worker)
    if len(finished_trials(study)) >= spec.n_trials and not waiting_trials(study):
        return 0
    before = len(study.trials)
    study.optimize(TrialRunner(spec, sweep_dir), callbacks=[_stop_when_done(spec.n_trials)], catch=(Exception,),
                   gc_after_trial=False)
    return len(study.trials) - before


# -- launching ---------------------------------------------------------------------------------------------------
def check_launcher(launcher: str, workers: int) -> None:
    """Refuse a launcher that cannot run here, before any trial starts."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if not (isinstance(workers, int) and 1 <= workers <= 4096):
        raise ConfigError(f"--workers must be in [1, 4096], got {workers!r}")
    if launcher in ("submitit-local", "slurm"):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ConfigError(f"--launcher {launcher} needs submitit: pip install 'xaisec[sweep]'") from None
    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("--launcher slurm needs a Slurm cluster, but `sbatch` is not on PATH; run on the cluster's "
                          "login node, or use --launcher process")


def launch(sweep_dir: Path, launcher: str, workers: int, slurm: dict | None = None) -> None:
    """Run ``workers`` workers of the sweep: in this process (one worker), in spawned processes, or as a
    submitit job array (locally or on Slurm); returns when they are done."""
    if launcher == "process" and workers == 1:
        run_worker(sweep_dir)
        return
    if launcher == "process":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in [pool.submit(run_worker, str(sweep_dir), i) for i in range(workers)]:
                done.result()
        return
    import submitit

    folder = sweep_dir / "jobs"
    if launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=(slurm or {}).get("timeout_min", 24 * 60))
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        try:
            executor.update_parameters(**(slurm or {}))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"sweep.slurm: {exc}") from None
    jobs = executor.map_array(run_worker, [str(sweep_dir)] * workers, list(range(workers)))
    log.info("submitted %d %s job(s): %s (logs in %s)", len(jobs), launcher, ", ".join(j.job_id for j in jobs), folder)
    for job in jobs:
        job.result()


__all__ = ["LAUNCHERS", "check_launcher", "launch", "run_worker"]
