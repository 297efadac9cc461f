"""``milan-hf`` command line: one subcommand per capability, each in ``milan_hf.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines ``register(subparsers)``, which adds its parser and sets ``func``.
_COMMAND_MODULES = [
    "milan_hf.commands.evaluate",
    "milan_hf.commands.describe",
    "milan_hf.commands.exemplars",
    "milan_hf.commands.probe_world",
    "milan_hf.commands.train",
    "milan_hf.commands.analyze",
    "milan_hf.commands.audit",
    "milan_hf.commands.edit",
    "milan_hf.commands.benchmark",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="milan-hf",
        description="Describe the neurons of vision models in natural language (MILAN).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as error:
        # Bad input: one clear line, no traceback.
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"milan-hf {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
