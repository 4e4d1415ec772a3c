"""GPU check of the papers' architectures (not a test; at most ~8 minutes on one GPU).

On a CUDA device, for resnet20 at 32 px, resnet50 and densenet121 at 224 px:
1. one plain training step and one explanation-aware Grad-CAM step (Fang's targeted objective, maps with
   ``create_graph=True``): ms each, their ratio and the peak GPU memory of each;
2. reference (plain) training throughput in images/s, in float32 and under bf16 autocast;
3. Grad-CAM maps of the same weights and images computed on the CPU and on the device: equal within a relative
   tolerance of 1e-3 of each map's maximum (TF32 is switched off for this comparison);
4. end to end on the device: a short `xaisec run` (reference, poisoning, explanation-aware attack, evaluation,
   report) and `xaisec audit --run ... --device` over the default checks (every tensor a check creates must
   live on the model's device).

    python benchmarks/gpu_check.py                      # on cuda
    python benchmarks/gpu_check.py --device cpu --quick # the same code path on the CPU, tiny sizes (a dry run)
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from paper_steps import PAPER_CASES, synthetic_batch, training_steps
from timing import median_times
from xaisec.explainers import build
from xaisec.models import autocast, build_model, resolve_device
from xaisec.train import training_mode

MAP_RTOL = 1e-3


def peak_memory(fn, device: torch.device) -> float:
    """Peak memory (MiB) allocated during one call of ``fn`` (0 on the CPU, where torch does not track it)."""
    if device.type != "cuda":
        fn()
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    return torch.cuda.max_memory_allocated(device) / 2**20


def throughput(arch: str, size: int, batch: int, device: torch.device, dtype: str | None, repeats: int) -> float:
    """Plain training images/s (BatchNorm in train mode) with autocast ``dtype`` (None: float32)."""
    model = build_model(arch, (3, size, size), 10).to(device)
    x, y, _, _ = synthetic_batch(batch, size, 10, device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        with training_mode(model), autocast(device, dtype):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()

    return batch / median_times({"step": step}, repeats, warmup=2)["step"]


def maps_agree(arch: str, size: int, device: torch.device) -> float:
    """Largest |CPU map - device map| / max |CPU map| of Grad-CAM on 4 images (same weights)."""
    torch.manual_seed(0)
    model = build_model(arch, (3, size, size), 10).eval()
    x = synthetic_batch(4, size, 10, torch.device("cpu"))[0]
    cpu_maps = build("gradcam", model)(x, 1).maps
    dev_maps = build("gradcam", model.to(device))(x.to(device), 1).maps.cpu()
    scale = cpu_maps.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return float(((cpu_maps - dev_maps).abs() / scale).max())


def end_to_end(device: torch.device, quick: bool) -> bool:
    """Step 4: a short backdoor run and an audit of its model on ``device``; True when both finish."""
    import tempfile

    from xaisec.cli import main as cli

    with tempfile.TemporaryDirectory(prefix="xaisec-gpu-check") as tmp:
        run = f"{tmp}/run"
        epochs = ["reference.epochs=1", "attack.epochs=1"] if quick else []
        ok = cli(["run", "default", f"device={device}", *epochs, "--out", run]) == 0
        ok = ok and cli(["audit", "--run", run, "--device", str(device), "--images", "100" if quick else "500",
                         "--budget", "60" if quick else "300", "--out", f"{tmp}/audit"]) == 0
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and batches: check the script runs")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = resolve_device(args.device)  # fails now on a machine without the asked-for device
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cases = [(a, 32 if args.quick else s, 2 if args.quick else b) for a, s, b in PAPER_CASES]
    repeats = 2 if args.quick else args.repeats
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {device} ({name}), load {os.getloadavg()[0]:.2f}")
    start = time.monotonic()
    failures = 0
    for arch, size, batch in cases:
        steps = training_steps(arch, size, batch, device)
        t = median_times(steps, repeats, warmup=2)
        mem = {k: peak_memory(fn, device) for k, fn in steps.items()}
        ratio = t["xai"] / t["plain"]
        print(f"1. {arch:12s} {size:3d}px batch {batch:3d}: plain {1000 * t['plain']:8.1f} ms ({mem['plain']:7.0f} MiB)"
              f"   Grad-CAM explanation-aware {1000 * t['xai']:8.1f} ms ({mem['xai']:7.0f} MiB)   ratio {ratio:5.2f}x")
        del steps
        bf16 = "bf16" if device.type == "cuda" or not args.quick else None
        fp32_ips = throughput(arch, size, batch, device, None, repeats)
        amp_ips = throughput(arch, size, batch, device, bf16, repeats) if bf16 else float("nan")
        print(f"2. {arch:12s} reference training {fp32_ips:9.1f} images/s (float32), {amp_ips:9.1f} images/s (bf16 autocast)")
        err = maps_agree(arch, size, device)
        ok = err <= MAP_RTOL
        failures += not ok
        print(f"3. {arch:12s} Grad-CAM maps CPU vs {device.type}: max relative difference {err:.2e} "
              f"(tolerance {MAP_RTOL:.0e}: {'ok' if ok else 'DIFFERS'})")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ok = end_to_end(device, args.quick)
    failures += not ok
    print(f"4. xaisec run + xaisec audit on {device}: {'ok' if ok else 'FAILED'}")
    print(f"done in {time.monotonic() - start:.0f} s, load {os.getloadavg()[0]:.2f}")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
