"""The router pipeline's plugin: probe routers as a router kind, and the `arbitrage router` commands."""

from __future__ import annotations


def _is_probe(spec: str) -> bool:
    from .probe import is_probe_router

    return is_probe_router(spec)


def _probe(spec: str, role: str, opts, separator: str):
    from .probe import load_probe_router

    return load_probe_router(spec, name=role)


def register(registry) -> None:
    registry.add_loader(
        "router",
        "probe router",
        _is_probe,
        _probe,
        priority=20,
        help="a directory written by `arbitrage router train --kind probe`",
    )
    from . import cli

    registry.add_command("router", cli.register)
