"""The models of a run, by role, and the one owner of what a role is: the protocol method the engine calls on
its model, and which loaded model fills it (the judge is the target itself, asked to judge, for the SpecReason
baseline). Loading (factory.py), sweeps, the server and the engine all resolve roles here."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .policies import Policy
from .protocols import Model, Router, StepGenerator, StepJudge, StepScorer


@dataclass(frozen=True)
class Role:
    name: str
    method: str  # what the engine calls on the role's model (protocols.py)
    filled_by: str | None = None  # another role whose model fills this one (None: a model of its own)


ROLE_TABLE: dict[str, Role] = {
    r.name: r
    for r in (
        Role("draft", "generate"),
        Role("target", "generate"),
        Role("prm", "score"),
        Role("router", "predict"),
        Role("judge", "judge", filled_by="target"),
    )
}
ROLES = tuple(ROLE_TABLE)


def loaded_role(role: str) -> str:
    """The role whose model is loaded to fill `role` (the judge: the target)."""
    return ROLE_TABLE[role].filled_by or role


def roles_to_load(needs) -> set[str]:
    """The roles whose models must be loaded for these needs."""
    return {loaded_role(r) for r in needs}


@dataclass
class Models:
    draft: StepGenerator | None = None
    target: StepGenerator | None = None
    prm: StepScorer | None = None
    router: Router | None = None
    judge: StepJudge | None = None

    @classmethod
    def assemble(cls, loaded: dict[str, object], needs, optional=()) -> Models:
        """The models of these roles from the loaded ones (by role name), aliases filled (a role filled by another
        role's model needs that model to have the role's method). `optional` roles are filled when they can be
        (a server loads every model it is given, so that a request may pick any policy they allow)."""
        models = cls()
        for role in set(needs) | set(optional) | {r for r in loaded if r in ROLE_TABLE}:
            spec = ROLE_TABLE[role]
            model = loaded.get(loaded_role(role))
            if model is None:
                continue
            if spec.filled_by and not callable(getattr(model, spec.method, None)):
                if role in needs:
                    raise ConfigError(
                        f"the {spec.filled_by} model ({type(model).__name__}) cannot act as {role}: it "
                        f"has no {spec.method}()"
                    )
                continue
            setattr(models, role, model)
        return models

    def call(self, role: str, requests):
        """The role's protocol call on its model (the engine's one dispatch)."""
        return getattr(getattr(self, role), ROLE_TABLE[role].method)(requests)

    def check(self, policy: Policy) -> None:
        missing = [m for m in sorted(policy.needs) if getattr(self, m) is None]
        if missing:
            flags = " ".join(f"--{loaded_role(m)} MODEL" for m in missing if not ROLE_TABLE[m].filled_by)
            raise ConfigError(
                f"policy {policy.name!r} needs {', '.join(missing)}" + (f": give {flags}" if flags else ""),
                "policy",
                f"policy {policy.name!r} needs a {' and a '.join(missing)} model, which this server did not load",
            )
        policy.check_models(self)

    def all(self) -> list[tuple[str, Model]]:
        return [(n, getattr(self, n)) for n in ROLES if getattr(self, n) is not None]

    def distinct(self) -> list[Model]:
        """Each model object once (the judge is usually the target itself)."""
        seen: set[int] = set()
        out: list[Model] = []
        for _, m in self.all():
            if id(m) not in seen:
                seen.add(id(m))
                out.append(m)
        return out
