"""Memory and throughput of streamed training data: one epoch of a small model over synthetic 224 px JPEG trees.

Run: ``nice -n 10 python benchmarks/data.py --root /tmp/xaisec_data [--sizes 1000,4000,16000] [--workers 0,2]``.
Writes ``imagefolder`` trees (10 classes, 256 px JPEGs, resized to 224 on decode) under ``--root`` once, then
measures each configuration in a fresh process: peak RSS of the training process (and of its largest loader
worker), images per second of one epoch (decode + forward/backward of a cheap 3-layer CNN, batch 64), with and
without the decoded cache (``cache_dir``; its one-off build is timed separately). The in-memory loader
(``load_imagefolder``) is measured at the smallest size for comparison. Goal: peak RSS flat (within +10%) from
the smallest to the largest tree. Not a test: timings depend on the machine and its load (printed).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

CLASSES = 10


def make_tree(root: Path, n: int, source_px: int = 256, seed: int = 0) -> Path:
    """``root/n<k>/<class>/<i>.jpg``: ``n`` smooth random JPEGs (about 10 KiB each, like photographs)."""
    tree = root / f"n{n}"
    done = tree / ".complete"
    if done.is_file():
        return tree
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = tree / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((source_px, source_px), Image.Resampling.BICUBIC)
        pixels = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (source_px, source_px, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)
    done.write_text("ok")
    return tree


def small_cnn() -> nn.Module:
    """A cheap model (224 px pooled to 56 px first), so the epoch measures the data path more than the model."""
    return nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, CLASSES))


def child(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process."""
    from xaisec.data import load_imagefolder, make_loader, open_dataset
    from xaisec.train import TensorBatches, cross_entropy, fit

    torch.set_num_threads(1)
    options = dict(root=args.tree, size=224, test_fraction=0.05, seed=0)
    start = time.perf_counter()
    if args.mode == "memory":
        data = load_imagefolder(**options)
        batches = TensorBatches(data.x_train, data.y_train, batch_size=64)
        n = len(data.x_train)
    else:
        cache = args.cache_dir if args.mode in ("cache", "build") else None
        data = open_dataset("imagefolder", cache_dir=cache, cache_workers=args.workers, **options)
        n = len(data.train)
        if args.mode == "build":
            return {"seconds": time.perf_counter() - start, "images": n, **_rss()}
        batches = make_loader(data.train, batch_size=64, seed=0, workers=args.workers)
    prepared = time.perf_counter()
    torch.manual_seed(0)
    model = small_cnn()
    fit(model, batches, cross_entropy, torch.optim.SGD(model.parameters(), lr=0.01), 1, progress=False)
    seconds = time.perf_counter() - prepared
    del batches
    gc.collect()  # persistent workers exit here, so their peak RSS is counted
    return {"images": n, "prepare_s": prepared - start, "epoch_s": seconds, "images_per_s": n / seconds, **_rss()}


def _rss() -> dict:
    mib = 1 / 1024  # ru_maxrss is in KiB on Linux
    return {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * mib,
            "worker_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * mib}


def measure(tree: Path, mode: str, workers: int, cache_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--tree", str(tree), "--mode", mode, "--workers", str(workers),
           "--cache-dir", str(cache_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode:
        raise SystemExit(f"{mode} workers={workers} on {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/xaisec_data"))
    parser.add_argument("--sizes", default="1000,4000,16000")
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.workers = int(args.workers)
        print(json.dumps(child(args)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    rows = []
    for n in sizes:
        start = time.perf_counter()
        tree = make_tree(args.root, n)
        print(f"tree of {n} images ready ({time.perf_counter() - start:.0f} s), load {os.getloadavg()[0]:.2f}", flush=True)
        cache_dir = args.root / f"cache{n}"
        configs = [("memory", 0)] if n == min(sizes) else []
        configs += [("stream", w) for w in workers] + [("build", max(workers))] + [("cache", w) for w in workers]
        for mode, w in configs:
            r = measure(tree, mode, w, cache_dir)
            rows.append({"n": n, "mode": mode, "workers": w, **r})
            rate = f"{r['images_per_s']:7.1f} img/s" if "images_per_s" in r else f"{r['seconds']:7.1f} s build"
            print(f"n={n:6d} {mode:6s} workers={w}  {rate}  peak RSS {r['rss_mib']:7.0f} MiB "
                  f"(largest worker {r['worker_rss_mib']:5.0f} MiB)  load {os.getloadavg()[0]:.2f}", flush=True)
    print("ratios (largest / smallest tree) of the training process's peak RSS:")
    for mode in ("stream", "cache"):
        for w in workers:
            sel = [r for r in rows if r["mode"] == mode and r["workers"] == w]
            if len(sel) > 1:
                print(f"  {mode} workers={w}: {sel[-1]['rss_mib'] / sel[0]['rss_mib']:.3f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
