"""`dytune` command line: one sub-command per module in `dytune.commands`.

Each command module exposes `add_parser(subparsers)` (cheap: argparse only, no torch import) and sets
`func=run` on its parser; heavy imports happen inside `run` so `dytune --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dytune.errors import DytuneError

# command name -> module under dytune.commands
COMMANDS: dict[str, str] = {
    "convert": "convert",
    "data": "data",
    "train": "train",
    "eval": "evaluate",
    "answer": "answer",
    "judge": "judge",
    "bench": "bench",
    "sweep": "sweep",
    "report": "report",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dytune",
        description="Convert Hugging Face causal LMs to Dynamic Tanh (DyT), post-train and compare them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"dytune.commands.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"dytune.commands.{module}":
                raise
            continue  # command not implemented yet in this checkout
        mod.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DytuneError as err:
        print(f"dytune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
