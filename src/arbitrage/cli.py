"""`arbitrage` command line. Every sub-command comes from a plugin (registry.py): the core's `run` and `sweep`,
the testbed's `testbed` and `demo`, the router pipeline's `router`, and any installed plugin's own. A plugin
that fails to load stops the command line with its name and the cause, instead of its commands vanishing."""

from __future__ import annotations

import argparse
import sys

from .errors import ArbitrageError


def build_parser() -> argparse.ArgumentParser:
    from .registry import registry

    parser = argparse.ArgumentParser(prog="arbitrage", description=__doc__.split(".")[0] + ".")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for _, register in registry().commands:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ArbitrageError as exc:
        print(f"arbitrage: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line itself (--ray runs it per shard)
    try:
        return int(args.func(args) or 0)
    except ArbitrageError as exc:
        print(f"arbitrage: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("arbitrage: interrupted; finished problems are saved, re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
