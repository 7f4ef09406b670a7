"""One problem's progress through the engine: its state, how a decided step is committed (counts, the step's
record, whether the problem ends), and what the engine hands back when it ends."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .models import ROLES
from .policies import Action, Decide, Decision, Policy
from .records import COUNTS, SPECULATION_COUNTS, Proposal, StepRecord
from .types import Problem, Sampling, Step

if TYPE_CHECKING:  # only for annotations: the engine imports this module
    from .engine import Engine


@dataclass(frozen=True)
class Limits:
    """Per-problem overrides of the engine's limits, and stop strings that end the solution where they occur."""

    max_steps: int | None = None
    max_step_tokens: int | None = None
    max_total_tokens: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class ProblemResult:
    problem: Problem
    steps: list[Step]
    records: list[StepRecord]  # one per step: author, text, scores, discarded proposals, seconds
    finish: str  # eos | max_steps | budget | stop | cancelled
    latency_s: float
    seconds: dict  # wall time this problem waited on each model
    counts: dict  # draft_tokens_accepted, draft_tokens_discarded, target_tokens, target_calls, ...
    solution: str = ""  # the accepted steps joined as in the context


def new_counts() -> dict:
    return dict.fromkeys(COUNTS, 0)


class Ticket:
    """A submitted problem: `cancel()` it, `wait()` for its `result` (a ProblemResult, or None if cancelled)."""

    def __init__(self, engine: Engine, problem: Problem):
        self.engine, self.problem = engine, problem
        self.result: ProblemResult | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        self.engine.cancel(self)

    def wait(self, timeout: float | None = None) -> ProblemResult | None:
        if not self._done.wait(timeout):
            raise TimeoutError(f"problem {self.problem.id} still running")
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class ProblemState:
    """One problem in the engine: its policy coroutine, what it is waiting for, its steps, records and counts."""

    ticket: Ticket
    policy: Policy
    limits: Limits
    sampling: Sampling | None
    on_done: Callable | None
    on_step: Callable | None
    start: float = 0.0
    coro: Decide | None = None  # the policy's decide() for the current step
    pending: Action | None = None  # the model call it waits on
    in_call: bool = False
    cancelled: bool = False
    steps: list[Step] = field(default_factory=list)
    records: list[StepRecord] = field(default_factory=list)
    seconds: dict = field(default_factory=lambda: dict.fromkeys(ROLES, 0.0))
    step_seconds: dict = field(default_factory=lambda: dict.fromkeys(ROLES, 0.0))
    counts: dict = field(default_factory=new_counts)
    used_tokens: int = 0
    finish: str | None = None
    on_error: Callable | None = None
    error: BaseException | None = None
    solo: bool = False  # a model call failed for a batch holding this problem: it goes alone next time

    @property
    def key(self) -> str:
        return self.ticket.problem.id

    def limit(self, name: str, config) -> int:
        """This problem's own limit, else the engine's."""
        v = getattr(self.limits, name)
        return v if v is not None else getattr(config, name)

    @property
    def problem(self) -> Problem:
        return self.ticket.problem


def commit(st: ProblemState, d: Decision, config, record_features: bool) -> None:
    """Append the decided step to a problem: counts, its record, and whether the problem ends here."""
    c = st.counts
    discarded = 0
    if d.draft is not None:
        c["draft_calls"] += 1
        if d.step is d.draft:
            c["draft_tokens_accepted"] += d.draft.n_tokens
        else:
            discarded = d.draft.n_tokens
            c["draft_tokens_discarded"] += discarded
    if d.target is not None:
        c["target_calls"] += 1
        c["target_tokens"] += d.target.n_tokens
    for s in d.target_samples or ():
        c["target_calls"] += 1
        c["target_tokens"] += s.n_tokens
    c["escalated_steps"] += int(d.escalated)
    spec = d.target.extras.get("speculation") if d.target is not None else None
    if spec:
        for k in SPECULATION_COUNTS:
            c[k] += int(spec.get(k.removeprefix("spec_"), 0))
    for proposal in (d.draft, d.target, d.step):  # the draft's sampling distributions served their one verification
        if proposal is not None:
            proposal.extras.pop("dists", None)
    scores = dict(d.scores)
    if "prm_draft" in scores and "prm_target" in scores:
        scores["advantage"] = scores["prm_target"] - scores["prm_draft"]
    feats = record_features
    record = StepRecord(
        index=len(st.steps),
        author=d.step.author,
        text=d.step.text,
        stop=d.step.stop,
        n_tokens=d.step.n_tokens,
        escalated=d.escalated,
        scores=scores,
        draft=Proposal.of(d.draft, feats) if d.draft is not None and (d.draft is not d.step or feats) else None,
        target=Proposal.of(d.target) if d.target is not None and d.target is not d.step else None,
        seconds={k: round(v, 6) for k, v in st.step_seconds.items() if v},
        discarded_draft_tokens=discarded,
        target_samples=[Proposal.of(s) for s in d.target_samples] if d.target_samples else None,
        speculation=dict(spec) if spec else None,
    )
    step = d.step
    stop_at = stop_string_cut(st, step, config.separator)
    if stop_at is not None:  # a stop string ends the solution where it occurs
        step = replace(
            step,
            text=step.text[:stop_at],
            stop="eos",
            extras={**step.extras, "chars_before_cut": len(step.context_text(config.separator))},
        )
        record.text, record.stop = step.text, "eos"
    st.records.append(record)
    st.steps.append(step)
    st.used_tokens += step.n_tokens
    if st.on_step is not None:
        st.on_step(st.ticket, record, step)
    if stop_at is not None:
        st.finish = "stop"
    elif step.stop == "eos":
        st.finish = "eos"
    elif len(st.steps) >= st.limit("max_steps", config):
        st.finish = "max_steps"
    elif st.used_tokens >= st.limit("max_total_tokens", config):
        st.finish = "budget"


def stop_string_cut(st: ProblemState, step: Step, separator: str) -> int | None:
    """Where a stop string first occurs in this step's text (also one that began in the step before)."""
    if not st.limits.stop:
        return None
    before = "".join(s.context_text(separator) for s in st.steps)[-max(map(len, st.limits.stop)) :]
    text = before + step.context_text(separator)
    hits = [text.find(s) for s in st.limits.stop if s and text.find(s) >= 0]
    if not hits:
        return None
    return max(0, min(hits) - len(before))
