"""The six step policies of method.md, each a small unit behind one protocol.

A policy's `decide()` is a generator: it yields the model calls it needs (`Draft`, `Target`, `Score`, `Route`),
receives each result, and returns a `Decision`. The engine batches the calls of many problems per model, so a
policy never sees batching, and what a policy does not yield is never computed: under rsd and router the
target runs only for the steps that are escalated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generator, Sequence

from .errors import ConfigError
from .types import Step


@dataclass(frozen=True)
class Draft:
    """Ask the draft model for the next step."""


@dataclass(frozen=True)
class Target:
    """Ask the target model for the next step."""


@dataclass(frozen=True)
class Score:
    """Ask the PRM for a score per candidate step."""

    candidates: tuple[Step, ...]


@dataclass(frozen=True)
class Route:
    """Ask the router for y_hat of the draft step."""

    draft: Step


Action = Draft | Target | Score | Route


@dataclass
class Decision:
    step: Step                  # the step appended to the context
    escalated: bool             # the target wrote (or was chosen to write) this step
    draft: Step | None = None   # the draft's proposal, kept or discarded
    target: Step | None = None  # the target's step, if one was written
    scores: dict = field(default_factory=dict)  # prm_draft, prm_target, router


Decide = Generator[Action, object, Decision]


class Policy:
    """Base: `needs` lists the models a policy calls; `threshold` is its tau (None if it has none)."""

    name = "base"
    needs: frozenset[str] = frozenset()
    threshold: float | None = None

    def decide(self) -> Decide:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        return self.name if self.threshold is None else f"{self.name}(tau={self.threshold:g})"


class DraftOnly(Policy):
    name, needs = "draft", frozenset({"draft"})

    def decide(self) -> Decide:
        d = yield Draft()
        return Decision(d, False, draft=d)


class TargetOnly(Policy):
    name, needs = "target", frozenset({"target"})

    def decide(self) -> Decide:
        t = yield Target()
        return Decision(t, True, target=t)


class RSD(Policy):
    """Reward-guided speculative decoding: keep the draft step iff PRM(draft) >= tau."""

    name, needs = "rsd", frozenset({"draft", "target", "prm"})

    def __init__(self, threshold: float):
        self.threshold = threshold

    def decide(self) -> Decide:
        d = yield Draft()
        (s,) = yield Score((d,))
        if s >= self.threshold:
            return Decision(d, False, draft=d, scores={"prm_draft": s})
        t = yield Target()
        return Decision(t, True, draft=d, target=t, scores={"prm_draft": s})


class RouterPolicy(Policy):
    """Arbitrage: escalate iff the router's y_hat > tau; the target's step is never computed otherwise."""

    name, needs = "router", frozenset({"draft", "target", "router"})

    def __init__(self, threshold: float):
        self.threshold = threshold

    def decide(self) -> Decide:
        d = yield Draft()
        y = yield Route(d)
        if y > self.threshold:
            t = yield Target()
            return Decision(t, True, draft=d, target=t, scores={"router": y})
        return Decision(d, False, draft=d, scores={"router": y})


class Oracle(Policy):
    """Upper bound: write both steps, escalate iff A = PRM(target) - PRM(draft) > tau."""

    name, needs = "oracle", frozenset({"draft", "target", "prm"})

    def __init__(self, threshold: float):
        self.threshold = threshold

    def decide(self) -> Decide:
        d = yield Draft()
        t = yield Target()
        sd, st = yield Score((d, t))
        scores = {"prm_draft": sd, "prm_target": st}
        if st - sd > self.threshold:
            return Decision(t, True, draft=d, target=t, scores=scores)
        return Decision(d, False, draft=d, target=t, scores=scores)


class Generate(Policy):
    """Router training data: write and score both steps, record everything, continue with the better one
    (the draft's on a tie, since keeping it is the cheap choice)."""

    name, needs = "generate", frozenset({"draft", "target", "prm"})

    def decide(self) -> Decide:
        d = yield Draft()
        t = yield Target()
        sd, st = yield Score((d, t))
        scores = {"prm_draft": sd, "prm_target": st}
        return Decision(t if st > sd else d, st > sd, draft=d, target=t, scores=scores)


POLICIES = {"draft": DraftOnly, "target": TargetOnly, "rsd": RSD, "router": RouterPolicy, "oracle": Oracle,
            "generate": Generate}
THRESHOLD_RANGES = {"rsd": (0.0, 1.0), "router": (0.0, 1.0), "oracle": (-1.0, 1.0)}
DEFAULT_THRESHOLDS = {"rsd": 0.7, "router": 0.5, "oracle": 0.0}

# Outside baseline: SpecReason-style target-as-judge (a 0-9 score); its module imports this one's classes above.
from .baselines.specreason import SpecReason  # noqa: E402

POLICIES["specreason"] = SpecReason
THRESHOLD_RANGES["specreason"] = (0.0, 9.0)
DEFAULT_THRESHOLDS["specreason"] = 7.0


def make_policy(name: str, threshold: float | None = None) -> Policy:
    """Build a policy by name, checking its threshold: PRM scores and y_hat lie in [0, 1], advantages in [-1, 1]."""
    if name not in POLICIES:
        raise ConfigError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    cls = POLICIES[name]
    if name not in THRESHOLD_RANGES:
        if threshold is not None:
            raise ConfigError(f"policy {name!r} takes no --threshold")
        return cls()
    lo, hi = THRESHOLD_RANGES[name]
    tau = DEFAULT_THRESHOLDS[name] if threshold is None else float(threshold)
    if not lo <= tau <= hi:
        raise ConfigError(f"--threshold {tau:g} is out of range for policy {name!r}: it must lie in [{lo:g}, {hi:g}]")
    return cls(tau)


def policy_names() -> Sequence[str]:
    return tuple(POLICIES)
