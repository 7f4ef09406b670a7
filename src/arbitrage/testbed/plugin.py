"""The testbed's plugin: its data source (`testbed:SPLIT[:N[:SEED]]`), its shipped models (`testbed:draft`,
`testbed:target`), its checker PRM (`testbed-checker[:FLIP[:SIGMA]]`) and the `testbed` and `demo` commands."""

from __future__ import annotations

from pathlib import Path

MODEL_SPECS = ("testbed:draft", "testbed:target")


def shipped_model_dir(spec: str) -> str:
    """`testbed:draft` / `testbed:target` -> the directory of the shipped model."""
    from .evaluate import default_models_dir

    return str(Path(default_models_dir()) / spec.split(":", 1)[1])


def _is_testbed_data(spec: str) -> bool:
    return spec.startswith("testbed:") and not Path(spec).is_file() and spec not in MODEL_SPECS


def _data(spec: str, **options):
    from .task import problems_from_spec  # the synthetic task: its own prompts, no template

    return problems_from_spec(spec)


def _generator(spec: str, role: str, opts, separator: str):
    from ..registry import registry

    path = shipped_model_dir(spec)
    return registry().find("generator", path).load(path, role, opts, separator)


def _checker(spec: str, role: str, opts, separator: str):
    from .prm import ArithmeticCheckerPRM

    return ArithmeticCheckerPRM.from_spec(spec, seed=opts.seed)


def register(registry) -> None:
    registry.add_loader("data", "testbed", _is_testbed_data, _data, priority=20,
                        help="testbed:SPLIT[:N[:SEED]]: the synthetic arithmetic task")
    registry.add_loader("generator", "testbed models", lambda s: s in MODEL_SPECS, _generator, priority=20,
                        help="testbed:draft or testbed:target: the shipped trained testbed models")
    registry.add_loader("prm", "testbed checker", lambda s: s.startswith("testbed-checker"), _checker, priority=20,
                        help="testbed-checker[:FLIP[:SIGMA]]: the task's exact step checker, optionally noisy")
    from . import cli

    registry.add_command("testbed", cli.register)
