"""Every snippet of README.md and docs/*.md is executed or validated, so the manual cannot rot silently.

Python blocks (```python): the blocks of one page run in order, sharing one namespace, in a fresh interpreter (a
subprocess: what a snippet registers stays there) whose working directory is an empty temporary folder. A line may
end with a marker comment that keeps the test small, visible to readers:

    x_adv = Adv2PGD(model, [term], steps=500, warmup=100)(x, y_target, target_maps=maps)  # doc-test: steps=4 warmup=2

Each ``NAME=VALUE`` of the marker replaces the value written after ``NAME=`` on that line (a keyword argument, or
a ``key=value`` inside a string); VALUE is one token without spaces.

YAML blocks (```yaml) are config files: each is written to the page's working directory under the name its first
comment line gives (``# my_attack.yaml: ...``) and validated completely; the bash commands of the page may use it.

Bash blocks (```bash): only lines that run ``xaisec`` are checked (installs, ``python``, ``pytest`` are not); the
commands of one page run in order, in-process, in one temporary working directory that holds the files the
snippets name as examples (:data:`FIXTURES`). Each command is either run or only validated:

- run: ``list``; ``config show`` / ``config reference``; ``run`` of a backdoor config whose run directory a later
  command of the page uses (with :data:`TINY` overrides appended: a few seconds); ``run --resume DIR``,
  ``report DIR`` and ``collect DIR...`` when those folders exist; ``audit`` when its ``--model`` file exists (budget
  capped at :data:`AUDIT_BUDGET` seconds, ``--images`` at 100).
- validated (arguments parsed, the whole config built and checked as ``xaisec config show`` does; nothing
  trained): every other ``run`` (the other papers' configs, ADV², Fang's defense evaluation: minutes to hours),
  ``sweep`` (every grid point and range end checked), ``explain`` (trains for 20 s), ``report --screenshot``
  (needs Chromium), and commands whose input folders the page has not made.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

#: appended to every `xaisec run` of a backdoor config that the test executes
TINY = ["data.train_size=200", "data.test_size=100", "reference.epochs=1", "attack.epochs=1",
        "stopping.monitor_size=50", "eval.samples=2"]
AUDIT_BUDGET = "6"

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
_MARKER = re.compile(r"\s*#\s*doc-test:\s*(.+)$")
#: the value after NAME=: a bracketed list, a quoted string or a token up to , ) ] whitespace or a quote
_VALUE = r"(\[[^\]]*\]|\"[^\"]*\"|'[^']*'|[^,)\]\s\"']+)"


@dataclass
class Block:
    page: Path
    lang: str
    line: int
    text: str


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [Block(page, m.group(1), text[:m.start()].count("\n") + 2, m.group(2)) for m in _FENCE.finditer(text)]


def apply_markers(source: str) -> str:
    """Each line ending in ``# doc-test: NAME=VALUE ...`` gets those values (see the module docstring)."""
    out = []
    for line in source.splitlines():
        marker = _MARKER.search(line)
        if marker:
            line = line[:marker.start()]
            for item in marker.group(1).split():
                name, sep, value = item.partition("=")
                assert sep, f"doc-test marker item {item!r} must be NAME=VALUE"
                line, n = re.subn(rf"(?<![\w.]){re.escape(name)}={_VALUE}", lambda m: f"{name}={value}", line)
                assert n, f"doc-test marker names {name!r}, which this line does not set: {line!r}"
        out.append(line)
    return "\n".join(out) + "\n"


def test_markers_replace_keyword_and_override_values():
    line = 'f(steps=500, c=10)(x, overrides=["attack.epochs=15", "x=1"])  # doc-test: steps=3 attack.epochs=1'
    assert apply_markers(line) == 'f(steps=3, c=10)(x, overrides=["attack.epochs=1", "x=1"])\n'
    with pytest.raises(AssertionError, match="does not set"):
        apply_markers("f(a=1)  # doc-test: b=2")


# --- python ---------------------------------------------------------------------------------------------------

_DRIVER = textwrap.dedent("""
    import json, sys, matplotlib
    matplotlib.use("Agg")
    namespace = {"__name__": "__main__"}
    for where, source in json.load(sys.stdin):
        exec(compile(source, where, "exec"), namespace)
""")


def python_pages() -> list[Path]:
    return [p for p in PAGES if any(b.lang == "python" for b in blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("page", python_pages(), ids=lambda p: p.name)
def test_python_snippets_run(page, tmp_path):
    snippets = [(f"{page.relative_to(ROOT)}, block at line {b.line}", apply_markers(b.text))
                for b in blocks(page) if b.lang == "python"]
    env = {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps(snippets), capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, f"a python snippet of {page.name} failed:\n{done.stderr[-4000:]}"


# --- bash -----------------------------------------------------------------------------------------------------

def xaisec_commands(page: Path) -> list[tuple[int, list[str]]]:
    """``(line, argv)`` of every ``xaisec ...`` command in the page's bash blocks (comments dropped)."""
    found = []
    for b in blocks(page):
        if b.lang != "bash":
            continue
        for i, raw in enumerate(b.text.replace("\\\n", " ").splitlines()):  # continued lines are one command
            words = shlex.split(raw, comments=True)
            for j, word in enumerate(words):  # `.venv/bin/xaisec run` after an install is part of the install line
                if word == "xaisec" and (j == 0 or words[j - 1] in ("&&", ";")) and "install" not in raw:
                    argv = words[j + 1:]
                    argv = argv[:argv.index("&&")] if "&&" in argv else argv
                    found.append((b.line + i, argv))
    return found


def _model_fixture(path: Path) -> None:
    """An untrained small_cnn for mnist5k: the `model.safetensors` the audit examples name."""
    import torch

    from xaisec.io import save_weights
    from xaisec.models import build_model

    torch.manual_seed(0)
    save_weights(build_model("small_cnn", (1, 28, 28), 10), path)


#: files the snippets name as the user's own, made in the page's working directory before its commands run
FIXTURES = {
    "my.yaml": lambda p: p.write_text("base: latka_badnets\nname: mine\nattack:\n  lam: 0.8\n"),
    "model.safetensors": _model_fixture,
}


def _option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


def _validate_config(items: list[str]):
    from xaisec.commands.run_cmd import split_items
    from xaisec.config import merge, parse_overrides, read_yaml, resolve_config
    from xaisec.runs import load_experiment

    config, overrides = split_items(items)
    return load_experiment(merge(read_yaml(resolve_config(config)), parse_overrides(overrides)))


def _run_dir(args, cfg) -> str:
    return str(args.out) if args.out else f"{cfg.out}/{cfg.name}"


def check_command(argv: list[str], later: str) -> str:
    """Run or validate one command (see the module docstring); returns "run" or "validated"."""
    from xaisec.cli import build_parser, main

    args, extra = build_parser().parse_known_args(argv)
    items = [*getattr(args, "items", []), *extra]
    assert all("=" in e for e in extra), f"unrecognised arguments {extra}"
    execute = False
    if args.command in ("list", "config"):
        execute = True
    elif args.command == "run" and args.resume is not None:
        execute = Path(args.resume).is_dir()
    elif args.command == "run":
        kind, cfg = _validate_config(items)
        if kind.name == "backdoor" and _run_dir(args, cfg) in later:
            argv = [*argv, *TINY]
            execute = True
    elif args.command == "report":
        execute = Path(args.run_dir).is_dir() and not args.screenshot
    elif args.command == "collect":
        execute = all(p.exists() for p in args.paths)
    elif args.command == "audit":
        execute = Path(args.model).is_file()
        if execute:
            argv = [a for i, a in enumerate(argv) if a != "--budget" and (i == 0 or argv[i - 1] != "--budget")]
            argv += ["--budget", AUDIT_BUDGET, "--images", "100"]
    elif args.command == "sweep" and args.resume is None:
        from xaisec.runs.sweep import check_spec, make_spec, parse_grid, parse_search

        from xaisec.commands.run_cmd import split_items
        from xaisec.config import merge, parse_overrides, read_yaml, resolve_config

        config, overrides = split_items(items)
        data = merge(read_yaml(resolve_config(config)), parse_overrides(overrides))
        check_spec(make_spec(data, grid=parse_grid(args.grid), search=parse_search(args.search), trials=args.trials,
                             objective=args.objective, holdout=args.holdout, storage=args.storage, track=args.track))
    if execute:
        assert main(argv) == 0, f"`xaisec {shlex.join(argv)}` failed"
    return "run" if execute else "validated"


_YAML_NAME = re.compile(r"#\s*([\w.-]+\.ya?ml)\b")


def yaml_configs(page: Path) -> list[tuple[int, str, str]]:
    """``(line, file name, text)`` of every ```yaml block (a config file; its first line names it)."""
    found = []
    for b in blocks(page):
        if b.lang == "yaml":
            name = _YAML_NAME.match(b.text)
            assert name, f"{page.name}:{b.line}: a yaml block starts with a comment naming its file (# name.yaml: ...)"
            found.append((b.line, name.group(1), b.text))
    return found


def bash_pages() -> list[Path]:
    return [p for p in PAGES if xaisec_commands(p) or yaml_configs(p)]


@pytest.mark.slow
@pytest.mark.parametrize("page", bash_pages(), ids=lambda p: p.name)
def test_xaisec_commands_run_or_validate(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = xaisec_commands(page)
    text = page.read_text()
    for name, make in FIXTURES.items():
        if name in text:
            make(tmp_path / name)
    outcome = []
    for line, name, source in yaml_configs(page):
        (tmp_path / name).write_text(source)
        _validate_config([name])
        outcome.append((line, "validated"))
    for i, (line, argv) in enumerate(commands):
        later = " ".join(shlex.join(a) for _, a in commands[i + 1:])
        try:
            outcome.append((line, check_command(argv, later)))
        except BaseException as exc:  # noqa: BLE001  (argparse exits with SystemExit)
            err = capsys.readouterr().err
            raise AssertionError(f"{page.name}:{line}: `xaisec {shlex.join(argv)}`: {type(exc).__name__}: {exc}\n"
                                 f"{err[-2000:]}") from exc
    print(page.name, outcome)
