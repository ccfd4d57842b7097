"""`python -m qwenkit <verb>`: the same functions the notebooks call.

Each area module defines `add_cli(subparsers)`; a verb's handler returns the exit code.
Errors of the kit (QwenkitError) print their problem and fix, without a traceback."""
from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["CLI_MODULES", "build_parser", "main"]

# one module per area; each registers its own verbs
CLI_MODULES = (
    "qwenkit.doctor",     # doctor
    "qwenkit.demo",       # demo (the main job)
    "qwenkit.cli_models", # quants, download, models
    "qwenkit.practice_hub",  # practice-hub
    "qwenkit.cli_fit",    # fit
    "qwenkit.cli_serve",  # serve, summarize
    "qwenkit.cli_bench",  # bench
    "qwenkit.synthetic",  # synthetic
    "qwenkit.cli_room",   # room (several servers behind one router)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qwenkit",
                                     description="Qwen3.5-35B-A3B on one consumer GPU with llama-cpp-python")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in CLI_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # an area not built yet
                continue
            raise
        if hasattr(mod, "add_cli"):
            mod.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from qwenkit.errors import QwenkitError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except QwenkitError as e:
        print(f"error: {e.problem}", file=sys.stderr)
        if e.fix:
            print(f"  fix: {e.fix}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
