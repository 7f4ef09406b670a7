"""What each model role is asked for a problem's pending action (the request the engine sends), and a
generator's answer as a `Step`. The engine batches these; here is only their content."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .policies import Continue, Glimpse, Judge, Route, Score, Target
from .problem import ProblemState
from .types import Author, Generation, GenerationRequest, JudgeRequest, RouteRequest, ScoreRequest, Step

if TYPE_CHECKING:
    from .engine import EngineConfig


def generation_request(st: ProblemState, config: EngineConfig) -> GenerationRequest:
    """A draft or target step for the problem: within its step and solution token budgets; a glimpse of a few
    tokens, a continuation of a partial step, or an escalation (with the draft's proposal to verify and in-step
    speculation when the engine verifies)."""
    a = st.pending
    budget = st.limit("max_total_tokens", config) - st.used_tokens
    step_max = min(st.limit("max_step_tokens", config), budget)
    prefix, sample = None, 0
    if isinstance(a, Glimpse):
        step_max = min(step_max, a.tokens)
    elif isinstance(a, Continue):
        prefix = a.partial
        step_max = step_max - a.partial.n_tokens
    speculation, gamma = None, 0
    if isinstance(a, Target):
        sample = a.sample
        if config.verify:
            speculation = a.speculation
            gamma = config.gamma if a.speculate else 0
    return GenerationRequest(
        st.key,
        st.problem.prompt,
        list(st.steps),
        max(0, step_max),
        len(st.steps),
        sampling=st.sampling,
        prefix=prefix,
        sample=sample,
        seed_key=st.problem.meta.get("seed_key"),
        speculation=speculation,
        gamma=gamma,
    )


def to_step(author: Author, g: Generation) -> Step:
    """A generator's answer as the step it proposes."""
    n = len(g.logprobs) if g.logprobs else len(g.token_ids)
    return Step(
        author=author,
        text=g.text,
        stop=g.stop,
        n_tokens=n,
        token_ids=g.token_ids or None,
        logprobs=g.logprobs,
        extras=dict(g.extras),
    )


def score_request(st: ProblemState, config: EngineConfig) -> ScoreRequest:
    a = st.pending
    assert isinstance(a, Score)
    return ScoreRequest(st.key, st.problem.question, list(st.steps), a.candidates)


def route_request(st: ProblemState, config: EngineConfig) -> RouteRequest:
    a = st.pending
    assert isinstance(a, Route)
    return RouteRequest(st.key, st.problem.question, list(st.steps), a.draft)


def judge_request(st: ProblemState, config: EngineConfig) -> JudgeRequest:
    a = st.pending
    assert isinstance(a, Judge)
    return JudgeRequest(st.key, st.problem.prompt, list(st.steps), a.draft, a.question)


# The request each role's model is sent for a problem's pending action (the roles themselves: models.ROLE_TABLE).
REQUEST_OF = {
    "draft": generation_request,
    "target": generation_request,
    "prm": score_request,
    "router": route_request,
    "judge": judge_request,
}


def request_for(role: str, st: ProblemState, config: EngineConfig):
    """The request for `role` that the problem's pending action asks for."""
    return REQUEST_OF[role](st, config)
