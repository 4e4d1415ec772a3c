"""The packaged backdoor configs over seeds and CPU thread counts: does each meet its targets on any machine?

Runs ``xaisec run CONFIG seed=S --threads T --out DIR/CONFIG-sS-tT`` one at a time (configs x seeds x threads,
in the order given; seeds then threads within a config unless ``--threads-last``), skipping run directories that
already finished or that another process runs now (several ``spread.py`` may share DIR: one per core), and
appends one line per run to ``DIR/spread.jsonl`` (wall seconds, ``uptime`` load before and after, CPU seconds,
exit status). A thread count changes the float reduction order, so the reference model and the attack
differ slightly: the spread over these runs is what another machine may see. ``--stop-at HH:MM`` (UTC) launches
no new run after that time. ``--archive DEST`` copies what ``xaisec collect`` reads of each finished run
(config.yaml, status.json, metrics.json: a few kB) and spread.jsonl to DEST, so that the docs' table can be rebuilt
from the repository (docs/results.md, "The packaged configs over seeds and thread counts"); ``--timing`` prints wall and CPU
seconds per config.

    python benchmarks/spread.py DIR --configs default fang_joint --seeds 0 1 --threads 1 2 [--threads-last]
                                [--stop-at 15:30] [--dry-run]
    python benchmarks/spread.py DIR --archive docs/runs/spread
    python benchmarks/spread.py DIR --timing
    xaisec collect docs/runs/spread --aggregate seed,threads --layout results
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from xaisec.runs.rundir import RunDir


def run_name(config: str, seed: int, threads: int) -> str:
    return f"{config}-s{seed}-t{threads}"


def state(run: Path) -> str | None:
    """The run directory's state (``running`` only while a process holds its lock), None if it has none yet."""
    return RunDir(run).state() if (run / "status.json").is_file() else None


def finished(run: Path) -> bool:
    return state(run) == "finished"


def load() -> list[float]:
    return [float(v) for v in os.getloadavg()]


def children_cpu() -> float:
    """User + system CPU seconds of finished child processes (a run's CPU time does not grow with the load)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def plan(configs: list[str], seeds: list[int], threads: list[int], threads_last: bool) -> list[tuple[str, int, int]]:
    """Every (config, seed, threads); with ``threads_last`` all first-thread-count runs come before the others."""
    if threads_last:
        return [(c, s, t) for t in threads for c in configs for s in seeds]
    return [(c, s, t) for c in configs for t in threads for s in seeds]


def launch(out: Path, config: str, seed: int, threads: int) -> dict:
    run = out / run_name(config, seed, threads)
    cmd = [sys.executable, "-m", "xaisec", "run", config, f"seed={seed}", "--threads", str(threads), "--out", str(run)]
    if run.exists():  # an interrupted run: continue it
        cmd = [sys.executable, "-m", "xaisec", "run", "--resume", str(run), "--threads", str(threads)]
    before, start, cpu = load(), time.perf_counter(), children_cpu()
    with open(out / f"{run.name}.out", "a") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    return {"run": run.name, "config": config, "seed": seed, "threads": threads, "rc": rc,
            "wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(children_cpu() - cpu, 1),
            "load_before": before, "load_after": load(),
            "finished_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(cmd[2:])}


def past(stop_at: str | None) -> bool:
    if stop_at is None:
        return False
    now = dt.datetime.now(dt.timezone.utc)
    hh, mm = map(int, stop_at.split(":"))
    return (now.hour, now.minute) >= (hh, mm)


#: what ``xaisec collect`` reads of a run (and its state): a few kB per run, small enough to keep in the repository
ARCHIVED = ("config.yaml", "status.json", "metrics.json")


def archive(out: Path, dest: Path) -> list[str]:
    """Copy each finished run's :data:`ARCHIVED` files and ``spread.jsonl`` from ``out`` to ``dest`` (the
    docs' tables are then rebuilt with ``xaisec collect DEST --aggregate seed,threads --layout results``)."""
    copied = []
    for run in sorted(p for p in out.iterdir() if p.is_dir() and finished(p)):
        (dest / run.name).mkdir(parents=True, exist_ok=True)
        for name in ARCHIVED:
            shutil.copyfile(run / name, dest / run.name / name)
        copied.append(run.name)
    if (out / "spread.jsonl").is_file():
        shutil.copyfile(out / "spread.jsonl", dest / "spread.jsonl")
    return copied


def timing(out: Path) -> str:
    """Per config: its runs' wall and CPU seconds and the 1-minute load around them (min–max, from spread.jsonl;
    the last entry of a run that was continued counts)."""
    entries: dict[str, dict] = {}
    for line in (out / "spread.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["rc"] == 0:
            entries[entry["run"]] = entry
    configs: dict[str, list[dict]] = {}
    for entry in entries.values():
        configs.setdefault(entry["config"], []).append(entry)

    def span(values: list[float], digits: int = 0) -> str:
        return f"{min(values):.{digits}f}–{max(values):.{digits}f}"

    lines = ["| config | runs | wall s | CPU s | load before/after |", "|---|---|---|---|---|"]
    for config, runs in configs.items():
        loads = [e[k][0] for e in runs for k in ("load_before", "load_after") if e.get(k)]
        lines.append(f"| `{config}` | {len(runs)} | {span([e['wall_s'] for e in runs])} | "
                     f"{span([e['cpu_s'] for e in runs if e.get('cpu_s')])} | {span(loads, 1) if loads else '–'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--configs", nargs="+", default=[])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--threads-last", action="store_true", help="all runs of the first thread count first")
    parser.add_argument("--stop-at", help="UTC HH:MM after which no new run starts")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--archive", type=Path, metavar="DEST", help="copy what collect reads of each finished run "
                        "(and spread.jsonl) to DEST, then stop")
    parser.add_argument("--timing", action="store_true", help="print wall/CPU seconds and load per config, then stop")
    args = parser.parse_args(argv)
    if args.archive:
        print(f"archived {len(archive(args.out, args.archive))} runs to {args.archive}")
        return
    if args.timing:
        print(timing(args.out))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for config, seed, threads in plan(args.configs, args.seeds, args.threads, args.threads_last):
        run = args.out / run_name(config, seed, threads)
        if state(run) in ("finished", "running"):  # done, or another spread.py on the same DIR runs it now
            continue
        if past(args.stop_at):
            print(f"stop: past {args.stop_at} UTC, not starting {run.name}", flush=True)
            break
        if args.dry_run:
            print(run.name, flush=True)
            continue
        entry = launch(args.out, config, seed, threads)
        with open(args.out / "spread.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        print(json.dumps(entry), flush=True)


if __name__ == "__main__":
    main()
