"""The house: imports flow one way (the core never reaches up into the testbed, the router pipeline or the
baselines; no module-level import circle), and a new model kind plugs in through the registry alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "arbitrage"
PLUGIN_PACKAGES = ("testbed", "router_training", "baselines")
# Top-floor assembly modules: they may name everything below them.
TOP = {"cli", "builtins"}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node but those under `if TYPE_CHECKING:` (imports for the type checker only)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        out.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return out


def imports(path: Path, module_level_only: bool = False, runtime_only: bool = False) -> set[str]:
    """Absolute names of the arbitrage modules a file imports (relative imports resolved); `runtime_only`: not
    counting imports for the type checker alone."""
    tree = ast.parse(path.read_text())
    me = module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    if module_level_only:
        nodes = list(tree.body)
    else:
        nodes = _runtime_nodes(tree) if runtime_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("arbitrage"):
                out.add(mod)
                out |= {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("arbitrage")}
    existing = {module_name(p) for p in SRC.rglob("*.py")}
    return {m for m in out if m in existing}


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def test_the_core_never_imports_the_plugin_packages():
    offenders = []
    for name, path in all_modules().items():
        parts = name.split(".")
        if len(parts) > 1 and (parts[1] in PLUGIN_PACKAGES or parts[1] in TOP):
            continue
        for imp in imports(path):  # function-level imports included: a lazy import still reaches up
            if imp.count(".") and imp.split(".")[1] in PLUGIN_PACKAGES:
                offenders.append(f"{name} -> {imp}")
    assert not offenders, offenders


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level", "with-lazy-imports"])
def test_no_import_circle(lazy):
    """No circle among module-level imports, nor once the imports inside functions are counted too (what runs
    at some point), leaving out the imports made for the type checker only."""
    graph = {
        name: {
            i
            for i in (imports(path, runtime_only=True) if lazy else imports(path, module_level_only=True))
            if i != name
        }
        for name, path in all_modules().items()
    }
    # a package's own __init__ is reached through its modules; drop edges to bare package names
    visiting, done, cycles = set(), set(), []

    def visit(n, stack):
        if n in done:
            return
        if n in visiting:
            cycles.append(stack[stack.index(n) :] + [n])
            return
        visiting.add(n)
        for m in graph.get(n, ()):
            visit(m, stack + [m])
        visiting.discard(n)
        done.add(n)

    for n in graph:
        visit(n, [n])
    assert not cycles, cycles


def test_a_new_prm_kind_plugs_in_through_the_registry(tmp_path, monkeypatch):
    """A plugin module registers a PRM kind; `arbitrage run` then builds it from its spec, without any change to
    factory.py (the plugin is found like the built-ins: a module with register(registry))."""
    import json

    from arbitrage import registry as reg
    from arbitrage.cli import main

    plugin = tmp_path / "my_prm_plugin.py"
    plugin.write_text(
        "class ConstantPRM:\n"
        "    name = 'constant'\n"
        "    def __init__(self, value):\n"
        "        self.value = value\n"
        "    def score(self, requests):\n"
        "        return [[self.value] * len(r.candidates) for r in requests]\n"
        "    def release(self, key):\n"
        "        pass\n"
        "def register(registry):\n"
        "    registry.add_loader('prm', 'constant', lambda s: s.startswith('constant:'),\n"
        "                        lambda spec, role, opts, sep: ConstantPRM(float(spec.split(':')[1])), priority=50)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    real = reg.plugin_entry_points

    class EP:
        name, value = "mine", "my_prm_plugin"

    monkeypatch.setattr(reg, "plugin_entry_points", lambda: [*real(), EP()])
    reg.reset_registry()
    try:
        out = tmp_path / "out"
        rc = main(
            [
                "run",
                "--policy",
                "rsd",
                "--threshold",
                "0.5",
                "--draft",
                "testbed:draft",
                "--target",
                "testbed:target",
                "--prm",
                "constant:0.9",
                "--data",
                "testbed:test:3",
                "--out",
                str(out),
                "--quiet",
                "--max-steps",
                "3",
            ]
        )
        assert rc == 0
        assert "mine" in reg.registry().plugins
        lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        steps = [s for r in lines for s in r["steps"]]
        assert steps and all(s["scores"]["prm_draft"] == 0.9 and not s["escalated"] for s in steps)
    finally:
        reg.reset_registry()


def test_a_plugin_that_fails_to_load_is_named(monkeypatch, capsys):
    from arbitrage import registry as reg
    from arbitrage.cli import main

    real = reg.plugin_entry_points

    class EP:
        name, value = "broken", "no_such_module_anywhere"

    monkeypatch.setattr(reg, "plugin_entry_points", lambda: [*real(), EP()])
    reg.reset_registry()
    try:
        assert main(["run", "--help"]) == 2
    finally:
        reg.reset_registry()
    err = capsys.readouterr().err
    assert "plugin 'broken'" in err and "no_such_module_anywhere" in err


@pytest.mark.parametrize("name", ["rsd", "router", "oracle", "specreason"])
def test_policies_describe_their_thresholds(name):
    from arbitrage.errors import ConfigError
    from arbitrage.policies import make_policy
    from arbitrage.registry import registry

    cls = registry().policy(name)
    lo, hi = cls.threshold_range
    assert lo <= cls.default_threshold <= hi and make_policy(name).threshold == cls.default_threshold
    with pytest.raises(ConfigError, match="out of range"):
        make_policy(name, hi + 1)
    assert cls.summary
