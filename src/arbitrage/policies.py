"""Step policies, each a small unit behind one protocol, and the model calls (actions) they can ask for.

A policy's `decide()` is a generator: it yields the model calls it needs (`Draft`, `Target`, `Score`, `Route`,
`Judge`, and for early decisions `Glimpse` / `Continue`), receives each result, and returns a `Decision`. The
engine batches the calls of many problems per model, so a policy never sees batching, and what a policy does
not yield is never computed: under rsd and router the target runs only for the steps that are escalated.

A policy describes itself: the models it `needs`, its threshold range and default (`threshold_range`,
`default_threshold`; None when it takes no threshold) and a one-line `summary`. Policies are found by name in
the registry (`registry.policy`), where built-ins and plugins add them the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import ConfigError
from .options import Option
from .types import Step


@dataclass(frozen=True)
class Draft:
    """Ask the draft model for the next step."""


@dataclass(frozen=True)
class Glimpse:
    """Ask the draft for only the first `tokens` tokens of the next step (a partial step, `stop == "length"`
    unless the step ended sooner). Continue it with `Continue`, or discard it."""

    tokens: int


@dataclass(frozen=True)
class Continue:
    """Ask the draft to finish the partial step it wrote (from its cache: no token is computed twice); the
    result is the whole step."""

    partial: Step


@dataclass(frozen=True)
class Target:
    """Ask the target model for the next step; `sample` > 0 asks for another sample from the same context
    (its own sampling seed). `speculation`: the draft's proposal for this step, which the target verifies and
    keeps as far as it would have written it itself (lossless; the engine's `verify` setting decides);
    `speculate`: let the draft propose tokens inside this step (the engine's `gamma`)."""

    sample: int = 0
    speculation: Step | None = None
    speculate: bool = True


@dataclass(frozen=True)
class Score:
    """Ask the PRM for a score per candidate step."""

    candidates: tuple[Step, ...]


@dataclass(frozen=True)
class Route:
    """Ask the router for y_hat of the draft step."""

    draft: Step


@dataclass(frozen=True)
class Judge:
    """Ask the judge (the target as a judge, for the SpecReason baseline) for a 0-9 score of the draft step.
    `question` is appended after it (see `target_judge`)."""

    draft: Step
    question: str


Action = Draft | Glimpse | Continue | Target | Score | Route | Judge

# The model role each action is sent to.
ROLE_OF = {
    Draft: "draft",
    Glimpse: "draft",
    Continue: "draft",
    Target: "target",
    Score: "prm",
    Route: "router",
    Judge: "judge",
}


def role_of(action) -> str:
    try:
        return ROLE_OF[type(action)]
    except KeyError:
        raise TypeError(f"a policy yielded {action!r}, which is not a model call") from None


@dataclass
class Decision:
    step: Step  # the step appended to the context
    escalated: bool  # the target wrote (or was chosen to write) this step
    draft: Step | None = None  # the draft's proposal, kept or discarded (a glimpse when the draft stopped early)
    target: Step | None = None  # the target's step, if one was written
    scores: dict = field(default_factory=dict)  # prm_draft, prm_target, router, ...
    target_samples: list[Step] | None = None  # extra target samples, recorded (generate --target-samples)


# What the engine sends back into a policy is the result of the call it yielded (a Step, a score, a list of
# scores): typed loosely here, each policy knows what it asked for.
Decide = Generator[Action, Any, Decision]


class Policy:
    """Base: `needs` lists the models a policy calls; `threshold` is its tau (None if it has none)."""

    name: ClassVar[str] = "base"
    needs: frozenset[str] = frozenset()  # a class attribute an instance may widen (target with speculation)
    threshold_range: ClassVar[tuple[float, float] | None] = None
    default_threshold: ClassVar[float | None] = None
    summary: ClassVar[str] = ""
    # Keep the draft's per-token features (log-probs, entropies, hidden state) in the records: what probe routers
    # learn from, so the policies that produce router training data say so.
    records_features: ClassVar[bool] = False
    # The policy's own settings beyond the threshold (flags of run/sweep/serve, request fields of the server);
    # `__init__` takes each as a keyword argument.
    options: ClassVar[tuple[Option, ...]] = ()
    # For thresholded policies: whether the step escalates when the policy's statistic is "below" tau (a higher tau
    # escalates more) or "above" it; a fixed ladder of thresholds over its useful range (calibrate's default grid,
    # chosen without looking at any data); and whether `calibrate` tries it by default.
    escalates: ClassVar[str | None] = None
    threshold_ladder: ClassVar[tuple[float, ...]] = ()
    calibrate_by_default: ClassVar[bool] = True
    threshold: float | None = None

    def decide(self) -> Decide:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        return self.name if self.threshold is None else f"{self.name}(tau={self.threshold:g})"

    def check_models(self, models) -> None:
        """Refuse models this policy cannot use as configured (beyond their presence)."""

    @classmethod
    def takes_threshold(cls) -> bool:
        return cls.threshold_range is not None

    @classmethod
    def check_threshold(cls, threshold: float | None) -> float | None:
        """The threshold to use: the default when None; a ConfigError when out of range or not taken."""
        if cls.threshold_range is None:
            if threshold is not None:
                raise ConfigError(
                    f"policy {cls.name!r} takes no --threshold",
                    "threshold",
                    f"policy {cls.name!r} takes no 'threshold'",
                )
            return None
        lo, hi = cls.threshold_range
        tau = cls.default_threshold if threshold is None else float(threshold)
        if tau is None or not lo <= tau <= hi:
            where = f"for policy {cls.name!r}: it must lie in [{lo:g}, {hi:g}]"
            raise ConfigError(
                f"--threshold {tau:g} is out of range {where}",
                "threshold",
                f"'threshold' {tau:g} is out of range {where}",
            )
        return tau


class ThresholdPolicy(Policy):
    threshold: float

    def __init__(self, threshold: float | None = None):
        tau = self.check_threshold(threshold)
        assert tau is not None, f"{type(self).__name__} takes a threshold but declares no threshold_range"
        self.threshold = tau


class DraftOnly(Policy):
    name, needs, summary = "draft", frozenset({"draft"}), "the draft writes every step"

    def decide(self) -> Decide:
        d = yield Draft()
        return Decision(d, False, draft=d)


class TargetOnly(Policy):
    """The target alone. With `speculate`, a draft proposes tokens inside its steps (token-level speculative
    decoding, lossless); without it the draft is never called."""

    name, needs, summary = "target", frozenset({"target"}), "the target writes every step"
    options = (
        Option(
            "speculate",
            bool,
            False,
            "let the draft propose tokens inside the target's steps "
            "(token-level speculative decoding, lossless; needs a draft)",
        ),
    )

    def __init__(self, speculate: bool = False):
        self.speculate = speculate
        if speculate:
            self.needs = frozenset({"target", "draft"})

    def describe(self) -> str:
        return "target+speculation" if self.speculate else "target"

    def decide(self) -> Decide:
        t = yield Target(speculate=self.speculate)
        return Decision(t, True, target=t)


class RSD(ThresholdPolicy):
    """Reward-guided speculative decoding: keep the draft step iff PRM(draft) >= tau."""

    name, needs = "rsd", frozenset({"draft", "target", "prm"})
    threshold_range, default_threshold = (0.0, 1.0), 0.7
    escalates, threshold_ladder = "below", tuple(round(0.05 + 0.1 * i, 2) for i in range(10))  # PRM(draft)
    summary = "keep the draft step iff PRM(draft) >= tau, else the target regenerates it"

    def decide(self) -> Decide:
        d = yield Draft()
        (s,) = yield Score((d,))
        if s >= self.threshold:
            return Decision(d, False, draft=d, scores={"prm_draft": s})
        t = yield Target(speculation=d)
        return Decision(t, True, draft=d, target=t, scores={"prm_draft": s})


class RouterPolicy(ThresholdPolicy):
    """Arbitrage: escalate iff the router's y_hat > tau; the target's step is never computed otherwise.

    With `decide_after` = K, the router reads only the draft's first K tokens (a router trained on them,
    `router build-data --decide-after K`): an escalated step then costs K draft tokens, not a whole step."""

    name, needs = "router", frozenset({"draft", "target", "router"})
    threshold_range, default_threshold = (0.0, 1.0), 0.5
    escalates, threshold_ladder = "above", tuple(round(0.05 + 0.1 * i, 2) for i in range(10))  # y_hat
    summary = "Arbitrage: the target regenerates iff the router's y_hat > tau"
    options = (
        Option(
            "decide_after",
            int,
            None,
            "decide after the draft's first K tokens of each step (a router "
            "trained with `router build-data --decide-after K`); an escalated "
            "step then discards only K draft tokens",
            minimum=1,
        ),
    )

    def __init__(self, threshold: float | None = None, decide_after: int | None = None):
        super().__init__(threshold)
        self.decide_after = self.options[0].check(decide_after)

    def describe(self) -> str:
        base = super().describe()
        return base if self.decide_after is None else f"{base[:-1]}, K={self.decide_after})"

    def check_models(self, models) -> None:
        trained = getattr(models.router, "decide_after", None)
        if trained != self.decide_after:
            have = f"reads the first {trained} tokens of a step" if trained else "reads whole steps"
            want = f"--decide-after {trained}" if trained else "no --decide-after"
            field = f"'decide_after': {trained}" if trained else "no 'decide_after'"
            raise ConfigError(
                f"the router {have} (it was trained so): run it with {want}",
                "decide_after",
                f"the router {have} (it was trained so): send {field}",
            )

    def decide(self) -> Decide:
        if self.decide_after is None:
            d = yield Draft()
            y = yield Route(d)
            if y > self.threshold:
                t = yield Target(speculation=d)
                return Decision(t, True, draft=d, target=t, scores={"router": y})
            return Decision(d, False, draft=d, scores={"router": y})
        g = yield Glimpse(self.decide_after)
        y = yield Route(g)
        if y > self.threshold:
            t = yield Target(speculation=g)
            return Decision(t, True, draft=g, target=t, scores={"router": y})
        d = g if g.stop != "length" or g.n_tokens < self.decide_after else (yield Continue(g))
        return Decision(d, False, draft=d, scores={"router": y})


class Oracle(ThresholdPolicy):
    """Upper bound: write both steps, escalate iff A = PRM(target) - PRM(draft) > tau."""

    name, needs = "oracle", frozenset({"draft", "target", "prm"})
    threshold_range, default_threshold = (-1.0, 1.0), 0.0
    escalates, calibrate_by_default = "above", False  # writes both steps at every step: never cheaper
    summary = "both write; keep the target's iff PRM(target) - PRM(draft) > tau (an upper bound)"

    def decide(self) -> Decide:
        d = yield Draft()
        t = yield Target(speculation=d)
        sd, st = yield Score((d, t))
        scores = {"prm_draft": sd, "prm_target": st}
        if st - sd > self.threshold:
            return Decision(t, True, draft=d, target=t, scores=scores)
        return Decision(d, False, draft=d, target=t, scores=scores)


class Generate(Policy):
    """Router training data: write and score both steps, record everything, continue with the better one
    (the draft's on a tie, since keeping it is the cheap choice).

    With `target_samples` = N > 1, the target writes N steps from the same context (at the run's temperature;
    each with its own seed); all are scored and recorded (`prm_target` stays the first sample's score, beside
    `prm_target_mean`, `prm_target_max` and `prm_target_samples`), and the trajectory continues with the first
    sample when it beats the draft, exactly as with one sample."""

    name, needs = "generate", frozenset({"draft", "target", "prm"})
    summary = "both write, both are scored, everything is recorded (router training data)"
    records_features = True
    options = (
        Option(
            "target_samples",
            int,
            1,
            "N target steps per context, all scored and recorded (use --temperature > 0)",
            minimum=1,
            request=False,
        ),
    )

    def __init__(self, target_samples: int = 1):
        self.target_samples = self.options[0].check(target_samples)

    def decide(self) -> Decide:
        d = yield Draft()
        samples = []
        for k in range(self.target_samples):
            samples.append((yield Target(sample=k, speculation=d)))
        t = samples[0]
        sd, *st_all = yield Score((d, *samples))
        st = st_all[0]
        scores = {"prm_draft": sd, "prm_target": st}
        if self.target_samples > 1:
            scores.update(
                prm_target_mean=sum(st_all) / len(st_all), prm_target_max=max(st_all), prm_target_samples=list(st_all)
            )
        chose_target = st > sd
        return Decision(
            t if chose_target else d,
            chose_target,
            draft=d,
            target=t,
            scores=scores,
            target_samples=samples[1:] if self.target_samples > 1 else None,
        )


BUILTIN_POLICIES = (DraftOnly, TargetOnly, RSD, RouterPolicy, Oracle, Generate)


def make_policy(name: str, threshold: float | None = None, **options) -> Policy:
    """Build a registered policy by name, checking its threshold against the range the policy declares."""
    from .registry import registry

    cls = registry().policy(name)
    declared = {o.name: o for o in cls.options}
    stray = [k for k, v in options.items() if v is not None and k not in declared]
    if stray:
        raise ConfigError(
            f"--{stray[0].replace('_', '-')} does not apply to policy {name!r}",
            stray[0],
            f"'{stray[0]}' does not apply to policy {name!r}",
        )
    options = {k: declared[k].check(v) for k, v in options.items() if v is not None}
    # each policy's __init__ takes its own options, and the threshold first when it has a threshold_range
    build: Callable[..., Policy] = cls
    if cls.threshold_range is None:
        cls.check_threshold(threshold)  # raises when a threshold is given
        return build(**options)
    return build(threshold, **options)
