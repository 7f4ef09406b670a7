"""`arbitrage` command line. Each feature module adds its own sub-commands through `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import ArbitrageError

# Modules that contribute sub-commands; each exposes `register(subparsers)`.
COMMAND_MODULES = (
    "arbitrage.run_cli",          # arbitrage run
    "arbitrage.testbed.cli",      # arbitrage testbed ..., arbitrage demo
    "arbitrage.router_training.cli",  # arbitrage router ...
    "arbitrage.sweep_cli",        # arbitrage sweep
)




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arbitrage", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):  # the feature module is not there (yet); anything else is a real error
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ArbitrageError as exc:
        print(f"arbitrage: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("arbitrage: interrupted; finished problems are saved, re-run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
