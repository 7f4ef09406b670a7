"""The step engine: the per-problem loop of method.md, with many problems in flight at once.

Every problem runs its own policy coroutine. The engine repeatedly picks one model (round-robin over the
models that have work waiting), sends it every pending request for it in one batched call, and resumes the
problems with the results. A problem ends on its own (end-of-sequence, max_steps or its token budget) and
its place is refilled at once from the queue: nothing is decided for a whole batch and nothing waits in
lock-step over the dataset.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .errors import ConfigError
from .judge import Judge, JudgeRequest
from .policies import Action, Decision, Draft, Policy, Route, Score, Target
from .protocols import Router, StepGenerator, StepScorer
from .types import Generation, GenerationRequest, Problem, RouteRequest, ScoreRequest, Step

RESOURCES = ("draft", "target", "prm", "router")


@dataclass
class EngineConfig:
    max_steps: int = 64            # steps per problem
    max_step_tokens: int = 512     # tokens per step
    max_total_tokens: int = 4096   # tokens per solution (accepted steps)
    concurrency: int = 8           # problems in flight at once
    separator: str = "\n\n"


@dataclass
class Models:
    draft: StepGenerator | None = None
    target: StepGenerator | None = None
    prm: StepScorer | None = None
    router: Router | None = None

    def check(self, policy: Policy) -> None:
        missing = [m for m in sorted(policy.needs) if getattr(self, m) is None]
        if missing:
            flags = " ".join(f"--{m} MODEL" for m in missing)
            raise ConfigError(f"policy {policy.name!r} needs {', '.join(missing)}: give {flags}")

    def all(self):
        return [(n, getattr(self, n)) for n in RESOURCES if getattr(self, n) is not None]


@dataclass
class ProblemResult:
    problem: Problem
    steps: list[Step]
    records: list[dict]       # one per step: author, text, scores, discarded proposals, seconds
    finish: str               # eos | max_steps | budget
    latency_s: float
    seconds: dict             # wall time this problem waited on each model
    counts: dict              # draft_tokens_accepted, draft_tokens_discarded, target_tokens, target_calls, ...
    solution: str = ""        # the accepted steps joined as in the context


@dataclass
class _State:
    problem: Problem
    start: float
    coro: object = None
    pending: Action | None = None
    steps: list[Step] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=lambda: dict.fromkeys(RESOURCES, 0.0))
    step_seconds: dict = field(default_factory=lambda: dict.fromkeys(RESOURCES, 0.0))
    counts: dict = field(default_factory=lambda: {"draft_tokens_accepted": 0, "draft_tokens_discarded": 0,
                                                  "target_tokens": 0, "target_calls": 0, "draft_calls": 0,
                                                  "escalated_steps": 0})
    used_tokens: int = 0
    finish: str | None = None


def _resource(action: Action) -> str:
    if isinstance(action, Draft):
        return "draft"
    if isinstance(action, (Target, Judge)):  # a Judge is a target forward pass (baselines/specreason.py)
        return "target"
    if isinstance(action, Score):
        return "prm"
    if isinstance(action, Route):
        return "router"
    raise TypeError(f"a policy yielded {action!r}, which is not a model call")


def step_record(step: Step | None, with_logprobs: bool = False) -> dict | None:
    if step is None:
        return None
    rec = {"text": step.text, "stop": step.stop, "n_tokens": step.n_tokens}
    if with_logprobs and step.logprobs is not None:
        rec["logprobs"] = [round(x, 5) for x in step.logprobs]
        if "entropies" in step.extras:
            rec["entropies"] = [round(x, 5) for x in step.extras["entropies"]]
        if "last_hidden" in step.extras:
            rec["last_hidden"] = [round(x, 5) for x in step.extras["last_hidden"]]
    return rec


class Engine:
    def __init__(self, policy: Policy, models: Models, config: EngineConfig | None = None,
                 clock: Callable[[], float] = time.perf_counter, record_features: bool | None = None):
        models.check(policy)
        self.policy, self.models, self.config, self.clock = policy, models, config or EngineConfig(), clock
        # Per-token draft features (log-probs, entropies) are what probe routers learn from: keep them in the
        # records of `generate` runs, where router training data comes from.
        self.record_features = policy.name == "generate" if record_features is None else record_features
        self.call_seconds = dict.fromkeys(RESOURCES, 0.0)  # wall time of the batched calls, each counted once
        self.call_counts = dict.fromkeys(RESOURCES, 0)
        self.batch_sizes: dict[str, list[int]] = {r: [] for r in RESOURCES}

    # ---------------------------------------------------------------------------------------------------
    def run(self, problems: Iterable[Problem], on_done: Callable[[ProblemResult], None]) -> None:
        queue = deque(problems)
        active: list[_State] = []
        turn = 0
        while queue or active:
            while queue and len(active) < self.config.concurrency:
                st = _State(queue.popleft(), self.clock())
                self._next_step(st)
                active.append(st)
            self._retire(active, on_done)
            if not active:
                continue
            waiting = {r: [s for s in active if _resource(s.pending) == r] for r in RESOURCES}
            for k in range(len(RESOURCES)):  # round-robin over the models that have work waiting
                resource = RESOURCES[(turn + k) % len(RESOURCES)]
                if waiting[resource]:
                    turn = (turn + k + 1) % len(RESOURCES)
                    break
            batch = waiting[resource]
            batch = [s for s in batch if type(s.pending) is type(batch[0].pending)]  # Target and Judge apart
            t0 = self.clock()
            results = self._call(resource, batch)
            dt = self.clock() - t0
            self.call_seconds[resource] += dt
            self.call_counts[resource] += 1
            self.batch_sizes[resource].append(len(batch))
            for st, res in zip(batch, results):
                st.seconds[resource] += dt
                st.step_seconds[resource] += dt
                self._resume(st, res)
            self._retire(active, on_done)

    def _retire(self, active: list[_State], on_done) -> None:
        for st in [s for s in active if s.finish is not None]:
            active.remove(st)
            for _, model in self.models.all():
                model.release(st.problem.id)
            solution = "".join(s.context_text(self.config.separator) for s in st.steps)
            on_done(ProblemResult(st.problem, st.steps, st.records, st.finish, self.clock() - st.start,
                                  dict(st.seconds), dict(st.counts), solution))

    # ---------------------------------------------------------------------------------------------------
    def _next_step(self, st: _State) -> None:
        st.step_seconds = dict.fromkeys(RESOURCES, 0.0)
        st.coro = self.policy.decide()
        st.pending = next(st.coro)

    def _resume(self, st: _State, value) -> None:
        try:
            st.pending = st.coro.send(value)
        except StopIteration as stop:
            self._commit(st, stop.value)
            if st.finish is None:
                self._next_step(st)

    def _commit(self, st: _State, d: Decision) -> None:
        c = st.counts
        if d.draft is not None:
            c["draft_calls"] += 1
            c["draft_tokens_accepted" if d.step is d.draft else "draft_tokens_discarded"] += d.draft.n_tokens
        if d.target is not None:
            c["target_calls"] += 1
            c["target_tokens"] += d.target.n_tokens
        c["escalated_steps"] += int(d.escalated)
        scores = dict(d.scores)
        if "prm_draft" in scores and "prm_target" in scores:
            scores["advantage"] = scores["prm_target"] - scores["prm_draft"]
        st.records.append({
            "index": len(st.steps), "author": d.step.author, "text": d.step.text, "stop": d.step.stop,
            "n_tokens": d.step.n_tokens, "escalated": d.escalated, "scores": scores,
            "draft": step_record(d.draft, self.record_features) if d.draft is not d.step or self.record_features
            else None,
            "target": step_record(d.target) if d.target is not None and d.target is not d.step else None,
            "seconds": {k: round(v, 6) for k, v in st.step_seconds.items() if v},
        })
        st.steps.append(d.step)
        st.used_tokens += d.step.n_tokens
        cfg = self.config
        if d.step.stop == "eos":
            st.finish = "eos"
        elif len(st.steps) >= cfg.max_steps:
            st.finish = "max_steps"
        elif st.used_tokens >= cfg.max_total_tokens:
            st.finish = "budget"

    # ---------------------------------------------------------------------------------------------------
    def _call(self, resource: str, batch: list[_State]) -> list:
        if isinstance(batch[0].pending, Judge):
            return self._judge(batch)
        if resource in ("draft", "target"):
            model: StepGenerator = getattr(self.models, resource)
            reqs = [GenerationRequest(st.problem.id, st.problem.prompt, list(st.steps),
                                      min(self.config.max_step_tokens, self.config.max_total_tokens - st.used_tokens),
                                      len(st.steps)) for st in batch]
            return [self._to_step(resource, g) for g in model.generate(reqs)]
        if resource == "prm":
            reqs = [ScoreRequest(st.problem.id, st.problem.question, list(st.steps), st.pending.candidates)
                    for st in batch]
            return self.models.prm.score(reqs)
        reqs = [RouteRequest(st.problem.id, st.problem.question, list(st.steps), st.pending.draft) for st in batch]
        return self.models.router.predict(reqs)

    def _judge(self, batch: list[_State]) -> list[float]:
        """The target scores each draft step (0-9); counted as `judge_calls`, timed as target time."""
        target = self.models.target
        if not hasattr(target, "judge"):
            raise ConfigError(f"the target backend {type(target).__name__} cannot judge steps (no judge())")
        for st in batch:
            st.counts["judge_calls"] = st.counts.get("judge_calls", 0) + 1
        return target.judge([JudgeRequest(st.problem.id, st.problem.prompt, list(st.steps), st.pending.draft,
                                          st.pending.question) for st in batch])

    @staticmethod
    def _to_step(author: str, g: Generation) -> Step:
        n = len(g.logprobs) if g.logprobs else len(g.token_ids)
        return Step(author=author, text=g.text, stop=g.stop, n_tokens=n, token_ids=g.token_ids or None,
                    logprobs=g.logprobs, extras=dict(g.extras))
