"""The testbed's plugin: its data source (`testbed:SPLIT[:N[:SEED]]`), its shipped models (`testbed:draft`,
`testbed:target` of the plain task; `testbed-phrased:draft`, `testbed-phrased:target` and the trained PRM
`testbed-phrased:prm` of the phrased task), its checker PRM (`testbed-checker[:FLIP[:SIGMA]]`) and the
`testbed` and `demo` commands."""

from __future__ import annotations

from pathlib import Path

TASK_OF_PREFIX = {"testbed": "plain", "testbed-phrased": "phrased"}
MODEL_SPECS = ("testbed:draft", "testbed:target", "testbed-phrased:draft", "testbed-phrased:target")
PRM_SPECS = ("testbed-phrased:prm",)


def shipped_model_dir(spec: str) -> str:
    """`testbed:draft`, `testbed-phrased:target`, `testbed-phrased:prm` ... -> the shipped model's directory."""
    from .evaluate import default_models_dir

    prefix, role = spec.split(":", 1)
    return str(Path(default_models_dir(TASK_OF_PREFIX[prefix])) / role)


def _is_testbed_data(spec: str) -> bool:
    return spec.startswith("testbed:") and not Path(spec).is_file() and spec not in MODEL_SPECS


def _trained_prm(spec: str, role: str, opts, separator: str):
    from ..registry import registry

    path = shipped_model_dir(spec)
    return registry().find("prm", path).load(path, role, opts, separator)


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
    registry.add_loader(
        "data",
        "testbed",
        _is_testbed_data,
        _data,
        priority=20,
        help="testbed:SPLIT[:N[:SEED]]: the synthetic arithmetic task",
    )
    registry.add_loader(
        "generator",
        "testbed models",
        lambda s: s in MODEL_SPECS,
        _generator,
        priority=20,
        help="testbed:draft, testbed:target (plain task), testbed-phrased:draft, "
        "testbed-phrased:target (phrased task): the shipped trained testbed models",
    )
    registry.add_loader(
        "prm",
        "testbed trained PRM",
        lambda s: s in PRM_SPECS,
        _trained_prm,
        priority=20,
        help="testbed-phrased:prm: the shipped value-head PRM trained on the phrased task",
    )
    registry.add_loader(
        "prm",
        "testbed checker",
        lambda s: s.startswith("testbed-checker"),
        _checker,
        priority=20,
        help="testbed-checker[:FLIP[:SIGMA]]: the task's exact step checker, optionally noisy",
    )
    from . import cli

    registry.add_command("testbed", cli.register)
