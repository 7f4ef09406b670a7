"""Where the pieces of a run are found: model loaders per role, data sources, policies, runners and commands.

Built-ins and plugins register the same way. A plugin is a module with `register(registry)`, named in the
`arbitrage.plugins` entry-point group of its distribution's metadata; this package names its own there
(`core`, `testbed`, `router_training`, `baselines`), so the core never imports the testbed or the router
pipeline, and adding a PRM kind, a router kind or a data source touches no core module::

    # my_plugin.py, with [project.entry-points."arbitrage.plugins"] mine = "my_plugin" in its pyproject
    def register(registry):
        registry.add_loader("prm", "my-prm", lambda spec: spec.startswith("my-prm:"), load_my_prm)

Loaders are tried by priority (highest first), then in registration order; the first whose `matches(spec)` is
true loads the model: `load(spec, role, options, separator)` (`options`: the run's `factory.ModelOptions`).
The generic local-directory / hub-id loaders match everything at the lowest priority, so more specific ones
win.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from .errors import ArbitrageError, ConfigError

if TYPE_CHECKING:  # the registry holds policy classes but never imports the policies at run time
    from .policies import Policy

GROUP = "arbitrage.plugins"
KINDS = ("generator", "prm", "router", "data")


@dataclass(frozen=True)
class Loader:
    kind: str  # generator | prm | router | data
    name: str  # shown in errors and help
    matches: Callable[[str], bool]
    load: Callable[..., Any]  # (spec, role, options, separator) for models; (spec, **options) for data
    priority: int = 0
    help: str = ""
    options: tuple = ()  # the loader's own settings (options.Option), read from ModelOptions.extra


@dataclass(frozen=True)
class Runner:
    """A way to produce results other than the step engine (e.g. the assisted-generation baseline): `build`
    takes (run config, models) and returns an object with `run(problems, on_done)` like the engine's."""

    name: str
    needs: frozenset[str]
    build: Callable[..., Any]
    summary: str = ""
    metrics: Callable[[dict], None] | None = None  # adjusts the run's metrics dict in place (its own measures)
    check: Callable[[Any], None] | None = None  # refuses a run config it cannot serve, before any loading


@dataclass
class Registry:
    loaders: dict[str, list[Loader]] = field(default_factory=lambda: {k: [] for k in KINDS})
    policies: dict[str, type[Policy]] = field(default_factory=dict)
    runners: dict[str, Runner] = field(default_factory=dict)
    commands: list[tuple[str, Callable]] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)

    # --- registering ------------------------------------------------------------------------------------
    def add_loader(
        self,
        kind: str,
        name: str,
        matches: Callable[[str], bool],
        load: Callable[..., Any],
        priority: int = 0,
        help: str = "",
        options: tuple = (),
    ) -> None:
        """`options`: settings of this loader's models (options.Option); run/sweep/serve give each a flag and
        the loader finds the values in `ModelOptions.extra` (by option name)."""
        if kind not in KINDS:
            raise ValueError(f"loader kind must be one of {KINDS}, not {kind!r}")
        self.loaders[kind].append(Loader(kind, name, matches, load, priority, help, tuple(options)))
        self.loaders[kind].sort(key=lambda lo: -lo.priority)  # stable: registration order within a priority

    def add_policy(self, cls: type[Policy]) -> None:
        name = getattr(cls, "name", None)
        if not name or name in self.policies or name in self.runners:
            raise ValueError(f"policy name {name!r} is missing or taken")
        self.policies[name] = cls

    def add_runner(
        self,
        name: str,
        needs,
        build: Callable[..., Any],
        summary: str = "",
        metrics: Callable[[dict], None] | None = None,
        check: Callable[[Any], None] | None = None,
    ) -> None:
        if name in self.policies or name in self.runners:
            raise ValueError(f"runner name {name!r} is taken")
        self.runners[name] = Runner(name, frozenset(needs), build, summary, metrics, check)

    def add_command(self, name: str, register: Callable) -> None:
        """`register(subparsers)` adds the sub-command `name` to the command line."""
        self.commands.append((name, register))

    # --- finding ----------------------------------------------------------------------------------------
    def find(self, kind: str, spec: str) -> Loader:
        for loader in self.loaders[kind]:
            if loader.matches(spec):
                return loader
        known = ", ".join(lo.name for lo in self.loaders[kind]) or "none"
        raise ConfigError(f"no {kind} loader accepts {spec!r} (registered: {known})")

    def policy(self, name: str) -> type[Policy]:
        if name not in self.policies:
            raise ConfigError(f"unknown policy {name!r}; choose one of {', '.join(self.policies)}")
        return self.policies[name]

    def runner(self, name: str) -> Runner | None:
        return self.runners.get(name)

    def policy_options(self) -> dict:
        """Every option a registered policy declares: name -> (Option, [policies that take it])."""
        from .options import merged

        return merged((name, cls.options) for name, cls in self.policies.items())

    def loader_options(self) -> dict:
        """Every setting a registered model loader declares: name -> (Option, [loaders that take it])."""
        from .options import merged

        return merged((lo.name, lo.options) for kind in ("generator", "prm", "router") for lo in self.loaders[kind])

    def thresholded(self) -> dict[str, tuple[float, float]]:
        """Policies that take a threshold, with their ranges."""
        return {n: c.threshold_range for n, c in self.policies.items() if c.threshold_range is not None}


_registry: Registry | None = None
_lock = threading.RLock()


def plugin_entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=GROUP), key=lambda ep: (ep.name != "core", ep.name))


def load_plugin(reg: Registry, name: str, module_name: str) -> None:
    """Import one plugin module and let it register; a plugin that fails says so, naming itself."""
    try:
        module = importlib.import_module(module_name)
        module.register(reg)
    except ArbitrageError:
        raise
    except Exception as exc:  # an import error in a plugin must not silently hide its commands or loaders
        raise ArbitrageError(f"plugin {name!r} ({module_name}) failed to load: {type(exc).__name__}: {exc}") from exc
    reg.plugins.append(name)


def registry() -> Registry:
    """The process-wide registry, with every installed plugin loaded (once, on first use)."""
    global _registry
    with _lock:
        if _registry is None:
            reg = Registry()
            points = plugin_entry_points()
            if not any(ep.name == "core" for ep in points):
                raise ArbitrageError(
                    "arbitrage's plugin metadata is missing (no 'core' entry point in the "
                    f"{GROUP!r} group): reinstall the package, e.g. pip install -e ."
                )
            for ep in points:
                load_plugin(reg, ep.name, ep.value)
            _registry = reg
        return _registry


def reset_registry() -> None:
    """Forget the loaded registry (tests that install plugins of their own)."""
    global _registry
    with _lock:
        _registry = None
