"""The models of a run, by role: draft, target, PRM, router and judge (the target itself, for the SpecReason
baseline). The engine calls each through its protocol (protocols.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .policies import Policy

ROLES = ("draft", "target", "prm", "router", "judge")


@dataclass
class Models:
    draft: object | None = None
    target: object | None = None
    prm: object | None = None
    router: object | None = None
    judge: object | None = None

    def check(self, policy: Policy) -> None:
        missing = [m for m in sorted(policy.needs) if getattr(self, m) is None]
        if missing:
            flags = " ".join(f"--{m} MODEL" for m in missing if m != "judge")
            raise ConfigError(f"policy {policy.name!r} needs {', '.join(missing)}" + (f": give {flags}" if flags else ""),
                              "policy", f"policy {policy.name!r} needs a {' and a '.join(missing)} model, which "
                                        f"this server did not load")
        policy.check_models(self)

    def all(self) -> list[tuple[str, object]]:
        return [(n, getattr(self, n)) for n in ROLES if getattr(self, n) is not None]

    def distinct(self) -> list[object]:
        """Each model object once (the judge is usually the target itself)."""
        seen, out = set(), []
        for _, m in self.all():
            if id(m) not in seen:
                seen.add(id(m))
                out.append(m)
        return out
