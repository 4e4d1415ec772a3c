"""``xaisec audit``: run the detector suite on a model you did not train and write report.html + audit.json."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ..audit import DEFAULT_CHECKS, load_audit_model, load_suspects, model_input_shape, run_audit
from ..audit.loading import is_entry_point
from ..audit.runner import MAX_BUDGET_SECONDS
from ..data import load_data
from ..errors import ConfigError
from ..io import check_writable_dir
from ..models import model_from_entry_point, resolve_device
from ..validation import check_int, check_number

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("audit", help="audit a model for backdoors and manipulated explanations",
                       description="Run Neural Cleanse, fine-pruning, Re-BN, explanation-consistency checks and (with "
                                   "--suspects) STRIP, Activation Clustering and Spectral Signatures on a model, within a "
                                   "time budget; write report.html and audit.json.")
    p.add_argument("--model",
                   help="safetensors weights (with --arch), or a Python entry point 'module:function' returning the "
                        "model (this imports and runs that module's code)")
    p.add_argument("--run", type=Path, metavar="RUN_DIR",
                   help="audit a model of an xaisec run directory instead: its config rebuilds the architecture and "
                        "the data (no --model/--arch/--data needed)")
    p.add_argument("--stage", default="attacked",
                   help="with --run: which stage's weights to audit (default: attacked; reference: the clean model)")
    p.add_argument("--arch", help="architecture of the weights (see `xaisec list models`)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept .pt/.pth checkpoints for --model/--reference, read with torch.load(weights_only=True) "
                        "(tensors only)")
    p.add_argument("--data",
                   help="clean data: a dataset name (NAME or NAME:key=value,...), an .npz file with x and y, or an "
                        "image folder (imagefolder:root=DIR,size=H,channels=C to set its size)")
    p.add_argument("--out", type=Path, default=Path("audit"), help="output folder (default: ./audit)")
    p.add_argument("--budget", type=float, default=300.0,
                   help=f"time budget in seconds, at most {MAX_BUDGET_SECONDS:.0f} (default: 300)")
    p.add_argument("--suspects", help=".npz file with an array x of inputs to screen (e.g. inputs you suspect "
                                      "carry a trigger); with --run, 'trigger' screens the run's triggered test "
                                      "images")
    p.add_argument("--reference", help="weights of a trusted model of the same architecture, for map comparison")
    p.add_argument("--checks", default=",".join(DEFAULT_CHECKS),
                   help=f"comma-separated checks to run, in order (default: {','.join(DEFAULT_CHECKS)})")
    p.add_argument("--images", type=int, default=1000,
                   help="clean images used for fitting and, separately, for evaluation (default: 1000 each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="where the model runs the checks: auto (a CUDA GPU when there is one), cpu, cuda "
                                     "or cuda:N (default: auto; with --run, the run's device setting)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    if not checks:
        raise ConfigError("--checks is empty; name at least one check")
    check_int(args.images, "--images", low=10, high=1_000_000)
    check_int(args.seed, "--seed", low=0, high=2**32 - 1)
    check_number(args.budget, "--budget (seconds)", low=0, low_open=True, high=MAX_BUDGET_SECONDS)
    check_writable_dir(args.out, "--out")  # before minutes of checks, not after them
    if args.device is not None:
        resolve_device(args.device)  # a device this machine lacks is refused before any loading
    if args.run is not None:
        if args.model or args.data or args.arch:
            raise ConfigError("--run takes the model, its architecture and the data from the run directory; drop "
                              "--model, --arch and --data")
        model, data, cfg = _from_run(args.run, args.stage)
        device = resolve_device(args.device or cfg.device)
        args.model, args.arch = str(args.run / f"{args.stage}.safetensors"), cfg.model.arch
    else:
        if not args.model or not args.data:
            raise ConfigError("give --model and --data (or --run RUN_DIR to audit a model of an xaisec run)")
        # an entry point is built first: a model that declares its input shape sets an image folder's size
        built = model_from_entry_point(args.model, "model") if is_entry_point(args.model) else None
        data = load_data(args.data, expect_shape=model_input_shape(built) if built is not None else None)
        model = load_audit_model(args.model, args.arch, data, allow_pickle=args.allow_pickle, built=built)
        device = resolve_device(args.device or "auto")
    model = model.to(device)  # data stays on the host; every check moves its batches to the model's device
    reference = (load_audit_model(args.reference, args.arch, data, reference=True, allow_pickle=args.allow_pickle)
                 if args.reference else None)
    if reference is not None:
        reference = reference.to(device)
    if args.suspects == "trigger":
        if args.run is None or not hasattr(cfg, "trigger"):
            raise ConfigError("--suspects trigger needs --run with a run that has a trigger (a backdoor run)")
        from ..backdoor.poison import apply_trigger
        from ..triggers import build_trigger

        suspects = apply_trigger(build_trigger(cfg.trigger.name, **cfg.trigger.options), data.x_test[:200])
    else:
        suspects = load_suspects(args.suspects, data) if args.suspects else None
    torch.manual_seed(args.seed)
    report = run_audit(model, data, out=args.out, budget=args.budget, checks=checks, suspects=suspects,
                       reference=reference, fit_images=args.images, eval_images=args.images, seed=args.seed,
                       meta={"model": args.model, "arch": args.arch})
    for name, check in report["checks"].items():
        print(f"{name:24s} {check['verdict']:13s} {check['seconds']:7.1f} s  {check['summary']}")
    print(f"verdict: {report['verdict']} ({report['total_seconds']:.0f} s); report: {args.out / 'report.html'}")
    return 0


def _from_run(run_dir: Path, stage: str):
    """``(model with the stage's weights, data, config)`` of an xaisec run directory."""
    from ..io import load_weights
    from ..runs import load_run
    from ..runs.common import load_data as load_run_data, model_factory

    _, cfg = load_run(run_dir)
    if not hasattr(cfg, "model") or not hasattr(cfg, "data"):
        raise ConfigError(f"{run_dir} is a {cfg.experiment} run, which has no single model to audit")
    weights = run_dir / f"{stage}.safetensors"
    if not weights.is_file():
        stages = sorted(p.stem for p in run_dir.glob("*.safetensors"))
        raise ConfigError(f"{run_dir} has no {weights.name}; its stage artifacts are {stages} (--stage attacked or "
                          "reference for a backdoor run)")
    data = load_run_data(cfg)
    model = load_weights(model_factory(cfg, data)(), weights).eval()
    return model, data, cfg
