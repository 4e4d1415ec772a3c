"""``xaisec`` command line: one sub-command per module in :mod:`xaisec.commands`.

Hyperparameters live in config files, not flags. User mistakes end with ``xaisec: error: ...`` and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import XaisecError

#: sub-command modules, each with ``add_parser(subparsers)`` and ``run(args) -> int``
COMMANDS = ("run", "sweep", "collect", "report", "config", "audit", "list", "explain")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors also exit with 2
        self.print_usage(sys.stderr)
        self.exit(2, f"xaisec: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xaisec", description="Security of deep-learning explanations.")
    parser.add_argument("--version", action="version", version=f"xaisec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}_cmd", __package__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `xaisec run CONFIG a=1 --out DIR b=2`: overrides may also come after options
        if hasattr(args, "items") and all("=" in e and not e.startswith("-") for e in extra):
            args.items = [*args.items, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except XaisecError as exc:
        logging.getLogger("xaisec").debug("where the error was raised:", exc_info=True)  # shown with --verbose
        print(f"xaisec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xaisec: interrupted; finished artifacts are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
