"""`dytune` command line: one sub-command per module in `dytune.commands`.

Each command module exposes `add_parser(subparsers, name)` (cheap: argparse only, no torch import) and sets
`func=run` on its parser; heavy imports happen inside `run`, so `dytune --help` answers at once.

Shared by every command, here: both spellings of a flag (`--max-new-tokens` and `--max_new_tokens`, as
transformers' HfArgumentParser accepts for `dytune train`), one help style (a flag's default is shown once, and
only when it says something), and errors printed as `dytune COMMAND: error: ...`.
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


class HelpFormatter(argparse.HelpFormatter):
    """A description with line breaks as written (a module docstring), else wrapped; `(default: X)` after a flag's
    help unless the help already speaks of its default or the default says nothing (None, False, an empty list)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or "%(default)" in text or default in (None, False, argparse.SUPPRESS)
                or default == [] or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dytune", formatter_class=HelpFormatter,
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
        sub.choices[name].formatter_class = HelpFormatter
    return parser


def normalise_spellings(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`--max_new_tokens` -> `--max-new-tokens` (or the other way round) where only the other spelling is a flag of
    the command; everything else, and anything after `--`, is left as it is."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    position = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if sub is None or position is None or argv[position] not in sub.choices:
        return list(argv)
    known = set(sub.choices[argv[position]]._option_string_actions)
    out = list(argv[:position + 1])
    rest = iter(argv[position + 1:])
    for arg in rest:
        if arg == "--":
            out += [arg, *rest]
            break
        flag, eq, value = arg.partition("=")
        if flag.startswith("--") and flag not in known:
            for other in (flag.replace("_", "-"), "--" + flag[2:].replace("-", "_")):
                if other in known:
                    flag = other
                    break
        out.append(flag + eq + value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(normalise_spellings(parser, list(sys.argv[1:] if argv is None else argv)))
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
