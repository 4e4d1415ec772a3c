"""The packaged backdoor configs over seeds and CPU thread counts: does each meet its targets on any machine?

Runs ``xaisec run CONFIG seed=S --threads T --out DIR/CONFIG-sS-tT`` one at a time (configs x seeds x threads,
in the order given; seeds then threads within a config unless ``--threads-last``), skipping run directories that
already finished, and appends one line per run to ``DIR/spread.jsonl`` (wall seconds, ``uptime`` load before and
after, CPU seconds, exit status). A thread count changes the float reduction order, so the reference model and the attack
differ slightly: the spread over these runs is what another machine may see. ``--stop-at HH:MM`` (UTC) launches
no new run after that time. ``--table`` prints, per config, mean and min-max of the headline metrics over the
finished runs in DIR (the table of docs/results.md, "Spread over seeds and thread counts").

    python benchmarks/spread.py DIR --configs default fang_joint --seeds 0 1 --threads 1 2 [--threads-last]
                                [--stop-at 15:30] [--dry-run]
    python benchmarks/spread.py DIR --table
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: headline metrics of the table: (column, metric key template, explainer-wise, in percent)
COLUMNS = (("clean Top-1 ref %", "reference/top1_clean", False, True),
           ("clean Top-1 attacked %", "attacked/top1_clean", False, True),
           ("ASR %", "attacked/asr", False, True), ("FSR %", "attacked/{e}/fsr", True, True),
           ("CR %", "attacked/{e}/cr", True, True),
           ("test L_p (FSR threshold)", "attacked/{e}/lp_attack", True, False))


def run_name(config: str, seed: int, threads: int) -> str:
    return f"{config}-s{seed}-t{threads}"


def finished(run: Path) -> bool:
    status = run / "status.json"
    return status.is_file() and json.loads(status.read_text()).get("state") == "finished"


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


def metrics(run: Path) -> tuple[dict[str, float], dict]:
    doc = json.loads((run / "metrics.json").read_text())
    return {k: v["value"] for k, v in doc["metrics"].items()}, doc["context"]


def spread(values: list[float], percent: bool = True) -> str:
    """``mean [min-max]``, in percent with one decimal, else with three."""
    if not values:
        return "–"
    scale, digits = (100, 1) if percent else (1, 3)
    mean, lo, hi = scale * statistics.fmean(values), scale * min(values), scale * max(values)
    if len(values) == 1 or round(hi, digits) == round(lo, digits):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"


def table(out: Path) -> str:
    """Per config (in order of first appearance in spread.jsonl, else by name): runs, headline metrics as mean
    [min-max], attack epochs and stop reasons, wall time."""
    timing = {}
    log = out / "spread.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            timing[entry["run"]] = entry
    runs: dict[str, list[Path]] = {}
    for run in sorted(out.iterdir(), key=lambda p: (list(timing).index(p.name) if p.name in timing else 10**6, p.name)):
        if run.is_dir() and finished(run) and (run / "metrics.json").is_file():
            runs.setdefault(run.name.rsplit("-s", 1)[0], []).append(run)
    lines = ["| config | runs (seed/threads) | " + " | ".join(c for c, _, _, _ in COLUMNS)
             + " | attack epochs (stop) | wall s | CPU s |", "|" + "---|" * (len(COLUMNS) + 5)]
    for config, dirs in runs.items():
        loaded = [metrics(d) for d in dirs]
        explainers = loaded[0][1]["explainers"]
        cells = []
        for _, key, per_explainer, percent in COLUMNS:
            keys = [key.format(e=e) for e in explainers] if per_explainer else [key]
            cell = " / ".join(spread([m[k] for m, _ in loaded if k in m], percent) for k in keys)
            thresholds = loaded[0][1].get("thresholds", {})
            if key.endswith("lp_attack") and cell.strip("– /") and all(e in thresholds for e in explainers):
                cell += " (" + " / ".join(f"{thresholds[e]['value']:g}" for e in explainers) + ")"
            cells.append(cell)
        epochs = ", ".join(f"{c['attack_epochs']}{'' if c.get('stop_reason') == 'converged' else '*'}" for _, c in loaded)
        walls = [timing[d.name]["wall_s"] for d in dirs if d.name in timing]
        cpus = [timing[d.name]["cpu_s"] for d in dirs if "cpu_s" in timing.get(d.name, {})]
        ids = ", ".join(d.name.rsplit("-s", 1)[1].replace("-t", "/") for d in dirs)
        lines.append(f"| `{config}` | {ids} | " + " | ".join(cells) + f" | {epochs} | "
                     + " | ".join(f"{min(v):.0f}–{max(v):.0f}" if v else "–" for v in (walls, cpus)) + " |")
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
    parser.add_argument("--table", action="store_true", help="print the spread table of the finished runs")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.out))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for config, seed, threads in plan(args.configs, args.seeds, args.threads, args.threads_last):
        run = args.out / run_name(config, seed, threads)
        if finished(run):
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
