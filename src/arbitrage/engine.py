"""The step engine: the per-problem loop of docs/method.md, with many problems in flight and the models
working at the same time.

Every problem runs its own policy coroutine, which yields model calls. Calls wait per model role; each model
runs on a *lane* (protocols.lane_of): in-process models on one device share a lane, so they never run at once
and never oversubscribe its threads, while models on different lanes (two servers, two GPUs) work at the same
time: while the target writes escalated steps for some problems, the draft, PRM and router serve the others.
Whenever a lane is free it takes every waiting request of one of its roles in one batched call (round-robin
over its roles). A problem ends on its own (end-of-sequence, max_steps, its token budget, a stop string) and its
place is refilled at once. With `parallel=False` every model shares one lane: one call at a time, the engine
before lanes (kept for comparison).

`run(problems, on_done)` runs a fixed list to the end in the calling thread. A long-lived service calls
`start()`, then `submit()` problems from any thread (each with its own policy, limits and sampling) and may
`cancel()` them; a cancelled problem's model state is released and its work in flight is cancelled where the
backend can (`cancel(key)`), else its result is dropped.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from .lanes import Lane
from .model_calls import request_for, to_step
from .models import ROLE_TABLE, ROLES, Models
from .policies import Draft, Judge, Policy, Route, Score, Target, role_of
from .problem import Limits, ProblemResult, ProblemState, Ticket, commit
from .protocols import can_cancel, lane_capacity, lane_of
from .types import AUTHORS, DEFAULT_SEPARATOR, Problem, Sampling


class EngineStopped(RuntimeError):
    """The background engine stopped on an error and takes no more problems."""


@dataclass
class EngineConfig:
    max_steps: int = 64  # steps per problem
    max_step_tokens: int = 512  # tokens per step
    max_total_tokens: int = 4096  # tokens per solution (accepted steps)
    concurrency: int = 8  # problems in flight at once
    separator: str = DEFAULT_SEPARATOR
    parallel: bool = True  # models on different lanes work at the same time
    # Escalations that reuse the draft's work (backends/speculative.py), both lossless: the target verifies the
    # draft's rejected proposal before writing the rest of the step, and a draft attached to the target proposes
    # `gamma` tokens at a time inside target-written steps (0: never).
    verify: bool = True
    gamma: int = 4


class Engine:
    def __init__(
        self,
        policy: Policy,
        models: Models,
        config: EngineConfig | None = None,
        clock: Callable[[], float] = time.perf_counter,
        on_call: Callable[[str, int, float, float], None] | None = None,
        isolate_failures: bool = False,
    ):
        models.check(policy)
        self.policy, self.models, self.config, self.clock = policy, models, config or EngineConfig(), clock
        self.on_call = on_call  # (role, batch size, start, end) of every batched call, for benchmarks
        # A serving engine fails only the problem a model call failed for (a batch that fails is retried one
        # problem at a time to find it) and keeps serving the others; `run()` stops at the first failure.
        self.isolate_failures = isolate_failures
        self.failure: BaseException | None = None  # what stopped the background thread, if anything did
        self._lanes: dict[Hashable, Lane] = {}
        self._lane_of_role: dict[str, Lane] = {}
        self._build_lanes()
        self._cv = threading.Condition()
        self._incoming: deque[ProblemState] = deque()
        self._cancel: list[Ticket] = []
        self._completions: list[tuple[Lane, str, list[ProblemState], object, float, float]] = []
        self._active: list[ProblemState] = []
        self._by_ticket: dict[int, ProblemState] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ids = itertools.count()

    def _build_lanes(self) -> None:
        self._lanes.clear()
        self._lane_of_role.clear()
        for role, model in self.models.all():
            key = lane_of(model) if self.config.parallel else "serial"
            capacity = lane_capacity(model) if self.config.parallel else 1
            lane = self._lanes.setdefault(key, Lane(key, [], capacity))
            lane.capacity = min(lane.capacity, capacity)
            if role not in lane.roles:
                lane.roles.append(role)
            self._lane_of_role[role] = lane

    # --- public ------------------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Problems submitted and not yet finished (waiting ones included)."""
        with self._cv:
            return len(self._active) + len(self._incoming)

    @property
    def alive(self) -> bool:
        """Whether a background engine can take problems (False once its thread stopped on an error)."""
        return self.failure is None and (self._thread is None or self._thread.is_alive())

    def submit(
        self,
        problem: Problem,
        *,
        on_done: Callable | None = None,
        on_step: Callable | None = None,
        policy: Policy | None = None,
        limits: Limits | None = None,
        sampling: Sampling | None = None,
        on_error: Callable | None = None,
    ) -> Ticket:
        """Queue one problem (thread-safe). `on_step(ticket, record, step)` is called as each step is accepted,
        `on_done(result)` when it ends, `on_error(exception)` when a model call failed for it (with
        `isolate_failures`; not when cancelled); all from the engine's thread."""
        if not self.alive:
            raise EngineStopped(f"the engine stopped: {self.failure!r}")
        policy = policy or self.policy
        self.models.check(policy)
        ticket = Ticket(self, problem)
        st = ProblemState(ticket, policy, limits or Limits(), sampling, on_done, on_step, on_error=on_error)
        with self._cv:
            self._incoming.append(st)
            self._cv.notify_all()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        with self._cv:
            self._cancel.append(ticket)
            self._cv.notify_all()

    def run(self, problems: Iterable[Problem], on_done: Callable[[ProblemResult], None]) -> None:
        """Run these problems to the end in this thread, `concurrency` at a time."""
        if self._thread is not None:
            raise RuntimeError("this engine is serving in the background; submit() problems to it instead")
        for p in problems:
            self.submit(p, on_done=on_done)
        try:
            self._loop(until_idle=True)
        finally:
            self._shutdown_lanes()

    def start(self) -> None:
        """Serve submitted problems on a background thread until `stop()`."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._serve, name="arbitrage-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Cancel whatever is still queued or running and stop the background thread."""
        if self._thread is not None:
            with self._cv:
                self._stopping = True
                self._cancel += [s.ticket for s in (*self._active, *self._incoming)]
                self._cv.notify_all()
            self._thread.join()
            self._thread = None
            self._shutdown_lanes()

    # --- the scheduler -----------------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            self._loop(until_idle=False)
        except BaseException as exc:  # fail every waiting ticket rather than leave clients hanging
            self.failure = exc
            logging.getLogger("arbitrage").error("the engine stopped: %r", exc, exc_info=exc)
            with self._cv:
                states = self._active + list(self._incoming)
                self._active, self._incoming = [], deque()
            for st in states:
                st.ticket.error = exc
                st.ticket._done.set()
                if st.on_error is not None:
                    st.on_error(exc)

    def _loop(self, until_idle: bool) -> None:
        while True:
            with self._cv:
                self._admit()
                cancels, self._cancel = self._cancel, []
                completions, self._completions = self._completions, []
            for ticket in cancels:
                self._do_cancel(ticket)
            for lane, role, batch, results, t0, t1 in completions:
                lane.in_flight -= 1
                self._apply(role, batch, results, t0, t1)
            self._retire()
            with self._cv:
                self._admit()
            # In run() a lone call runs in this thread (nothing could overlap it). A serving engine does the same
            # while it holds a single problem and none waits: a request arriving meanwhile waits for at most this
            # one call, and a lone request pays no thread hand-offs.
            with self._cv:
                lone = len(self._active) <= 1 and not self._incoming
            inline = self._dispatch(allow_inline=until_idle or lone)
            if inline is not None:
                self._apply(*inline)
                self._retire()
                continue
            with self._cv:
                if (
                    self._completions
                    or self._cancel
                    or (self._incoming and len(self._active) < self.config.concurrency)
                ):
                    continue
                busy = any(not lane.idle for lane in self._lanes.values())
                if not busy and not self._active and not self._incoming:
                    self._flush_releases()
                    if until_idle or self._stopping:
                        return
                if self._stopping and not busy and not self._active:
                    return
                self._cv.wait()

    def _admit(self) -> None:
        while self._incoming and len(self._active) < self.config.concurrency:
            st = self._incoming.popleft()
            st.start = self.clock()
            self._active.append(st)
            self._by_ticket[id(st.ticket)] = st
            self._next_step(st)

    def _ready(self, role: str) -> list[ProblemState]:
        ready = [
            s
            for s in self._active
            if not s.in_call and s.finish is None and s.pending is not None and role_of(s.pending) == role
        ]
        solo = next((s for s in ready if s.solo), None)
        return [solo] if solo is not None else ready  # a problem of a failed batch goes alone

    def _dispatch(self, allow_inline: bool = True):
        """Send a batch to every free lane that has work. In `run()`, when only one batch goes out and no other
        lane is busy, it runs right here (every other problem is waiting on it, so nothing could overlap it),
        which keeps batch-size-1 latency free of thread hand-offs; returns its completion for the caller to
        apply."""
        jobs = []
        for lane in self._lanes.values():
            if lane.idle:
                self._flush_releases(lane)
            taken = 0
            for k in range(len(lane.roles)):
                if lane.in_flight + taken >= lane.capacity:
                    break
                role = lane.roles[(lane.turn + k) % len(lane.roles)]
                batch = self._ready(role)
                if batch:
                    jobs.append((lane, role, batch))
                    taken += 1
                    for st in batch:
                        st.in_call = True
            if taken:
                lane.turn = (lane.turn + 1) % len(lane.roles)
        if not jobs:
            return None
        if allow_inline and len(jobs) == 1 and all(lane.idle for lane in self._lanes.values()):
            lane, role, batch = jobs[0]
            t0 = self.clock()
            try:
                results = self._call(role, batch)
            except Exception as exc:  # handled like a failed lane job (_apply)
                results = exc
            return role, batch, results, t0, self.clock()
        for lane, role, batch in jobs:
            lane.in_flight += 1
            requests = self._requests(role, batch)  # built here: the problems' state belongs to this thread
            lane.submit(self._job(lane, role, batch, requests))
        return None

    def _job(self, lane: Lane, role: str, batch: list[ProblemState], requests):
        def work():
            t0 = self.clock()
            try:
                results = self._send(role, requests)
            except BaseException as exc:  # re-raised on the scheduler thread
                results = exc
            t1 = self.clock()
            with self._cv:
                self._completions.append((lane, role, batch, results, t0, t1))
                self._cv.notify_all()

        return work

    def _apply(self, role: str, batch: list[ProblemState], results, t0: float, t1: float) -> None:
        if isinstance(results, BaseException):
            if not self.isolate_failures or not isinstance(results, Exception):
                raise results
            self._isolate(batch, results)
            return
        if self.on_call is not None:
            self.on_call(role, len(batch), t0, t1)
        dt = t1 - t0
        if role == "judge":
            for st in batch:
                st.counts["judge_calls"] += 1
        for st, res in zip(batch, results):
            st.in_call = False
            if st.cancelled:
                continue
            st.seconds[role] += dt
            st.step_seconds[role] += dt
            st.solo = False
            if not self.isolate_failures:
                self._resume(st, res)
                continue
            try:
                self._resume(st, res)
            except Exception as exc:  # a policy or callback failed for this problem only
                self._fail(st, exc)

    def _isolate(self, batch: list[ProblemState], exc: Exception) -> None:
        """A batched call failed: a problem that was alone in it fails; the others go again one at a time."""
        for st in batch:
            st.in_call = False
            if st.cancelled:
                continue
            if len(batch) == 1:
                self._fail(st, exc)
            else:
                st.solo = True

    @staticmethod
    def _fail(st: ProblemState, exc: Exception) -> None:
        st.error, st.finish, st.pending = exc, "error", None

    def _retire(self) -> None:
        for st in [s for s in self._active if s.finish is not None and not s.in_call]:
            assert st.finish is not None  # only finished problems retire
            self._active.remove(st)
            self._by_ticket.pop(id(st.ticket), None)
            self._release(st.key)
            if st.finish == "cancelled":
                st.ticket._done.set()
                continue
            if st.finish == "error":
                st.ticket.error = st.error
                st.ticket._done.set()
                if st.on_error is not None:
                    st.on_error(st.error)
                continue
            solution = "".join(s.context_text(self.config.separator) for s in st.steps)
            result = ProblemResult(
                st.problem,
                st.steps,
                st.records,
                st.finish,
                self.clock() - st.start,
                dict(st.seconds),
                dict(st.counts),
                solution,
            )
            st.ticket.result = result
            try:
                if st.on_done is not None:
                    st.on_done(result)
            finally:
                st.ticket._done.set()

    def _do_cancel(self, ticket: Ticket) -> None:
        with self._cv:
            queued = next((s for s in self._incoming if s.ticket is ticket), None)
            if queued is not None:
                self._incoming.remove(queued)
        if queued is not None:
            ticket._done.set()
            return
        st = self._by_ticket.get(id(ticket))
        if st is None or st.finish is not None:
            return
        st.cancelled, st.finish = True, "cancelled"
        if st.in_call and st.pending is not None:
            model = getattr(self.models, role_of(st.pending))
            if can_cancel(model):
                model.cancel(st.key)  # frees the server slot / the batch row now; its result is dropped

    def _release(self, key: str) -> None:
        for model in self.models.distinct():
            lane = self._lanes[lane_of(model) if self.config.parallel else "serial"]
            lane.releases.append((model, key))
        self._flush_releases()

    def _flush_releases(self, lane: Lane | None = None) -> None:
        for ln in [lane] if lane is not None else self._lanes.values():
            if ln.idle and ln.releases:
                todo, ln.releases = ln.releases, []
                for model, key in todo:
                    model.release(key)

    def _shutdown_lanes(self) -> None:
        for lane in self._lanes.values():
            lane.close()
        self._flush_releases()

    # --- one problem -------------------------------------------------------------------------------------
    def _next_step(self, st: ProblemState) -> None:
        st.step_seconds = dict.fromkeys(ROLES, 0.0)
        st.coro = st.policy.decide()
        st.pending = next(st.coro)

    def _resume(self, st: ProblemState, value) -> None:
        assert st.coro is not None  # resumed only after _next_step started the policy's step
        try:
            st.pending = st.coro.send(value)
        except StopIteration as stop:
            st.pending = None
            commit(st, stop.value, self.config, st.policy.records_features)
            if st.finish is None:
                self._next_step(st)

    # --- model calls -------------------------------------------------------------------------------------
    def _call(self, role: str, batch: list[ProblemState]):
        return self._send(role, self._requests(role, batch))

    def _requests(self, role: str, batch: list[ProblemState]) -> list:
        return [request_for(role, st, self.config) for st in batch]

    def _send(self, role: str, requests: list):
        results = self.models.call(role, requests)
        if ROLE_TABLE[role].method == "generate":
            assert role in AUTHORS  # the generator roles are the draft and the target
            return [to_step(role, g) for g in results]
        return results


__all__ = [
    "ROLES",
    "EngineConfig",
    "Limits",
    "Models",
    "ProblemResult",
    "Ticket",
    "Engine",
    "Draft",
    "Target",
    "Score",
    "Route",
    "Judge",
]
