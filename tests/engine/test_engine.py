"""The step engine with scripted models: who is called, how often, in which batches, when problems end, what
the records and timings say, and that models on different lanes work at the same time."""

import threading
import time

import pytest

from arbitrage.engine import Engine, EngineConfig, Limits, Models
from arbitrage.errors import ConfigError
from arbitrage.policies import make_policy
from arbitrage.testing.fakes import FakeGenerator, FakePRM, FakeRouter, problems

LENGTHS = [5, 1, 7, 3, 2, 6]


def run(policy_name, threshold=None, lengths=LENGTHS, concurrency=3, models=None, **cfg):
    probs = problems(lengths)
    by_key = {p.id: p.meta["n_steps"] for p in probs}
    models = models or Models(
        draft=FakeGenerator("draft", by_key), target=FakeGenerator("target", by_key), prm=FakePRM(), router=FakeRouter()
    )
    policy = make_policy(policy_name, threshold)
    keep = Models(**{r: getattr(models, r) for r in policy.needs})
    done = []
    engine = Engine(policy, keep, EngineConfig(concurrency=concurrency, **cfg))
    engine.run(probs, done.append)
    return models, done, engine


@pytest.mark.parametrize("name,tau", [("rsd", 0.5), ("router", 0.5), ("rsd", 0.95), ("router", 0.05)])
def test_target_runs_only_for_escalated_steps(name, tau):
    models, done, _ = run(name, tau)
    escalated = sum(r.counts["escalated_steps"] for r in done)
    assert models.target.n_requests == escalated == sum(r.counts["target_calls"] for r in done)
    assert models.draft.n_requests == sum(len(r.steps) for r in done)  # one draft proposal per step
    assert escalated == sum(rec.escalated for r in done for rec in r.records)
    assert all(rec.author == ("target" if rec.escalated else "draft") for r in done for rec in r.records)


def test_rsd_and_router_decisions_follow_the_scores():
    _, done, _ = run("rsd", 0.5)
    for r in done:
        for rec in r.records:  # the fake PRM gives the draft 0.9 at even steps and 0.2 at odd ones
            assert rec.escalated == (rec.index % 2 == 1)
            assert rec.scores["prm_draft"] == (0.9 if rec.index % 2 == 0 else 0.2)
    _, done, _ = run("router", 0.5)
    for r in done:
        for rec in r.records:
            assert rec.escalated == (rec.index % 3 == 0)


def test_escalated_steps_record_the_discarded_draft_proposal():
    """The wasted-escalation analysis reads the draft's discarded proposal of every rsd/router escalation."""
    for name in ("rsd", "router"):
        _, done, _ = run(name, 0.5)
        for r in done:
            for rec in r.records:
                if rec.escalated:
                    assert rec.draft is not None and rec.draft.text.startswith(f"d{rec.index}")
                    assert rec.discarded_draft_tokens == rec.draft.n_tokens == 3
                else:
                    assert rec.draft is None and rec.discarded_draft_tokens == 0  # the kept step is the draft's
            assert r.counts["draft_tokens_discarded"] == sum(rec.discarded_draft_tokens for rec in r.records)


def test_target_policy_never_calls_draft_and_draft_policy_calls_only_draft():
    models, done, _ = run("target")
    assert models.draft.calls == [] and models.prm.calls == [] and models.router.calls == []
    assert models.target.n_requests == sum(len(r.steps) for r in done) == sum(LENGTHS)
    models, done, _ = run("draft")
    assert models.target.calls == [] and models.prm.calls == [] and models.router.calls == []
    assert all(r.counts["target_calls"] == 0 and r.counts["draft_tokens_discarded"] == 0 for r in done)


def test_oracle_and_generate_keep_the_step_their_scores_choose():
    """Both models write every step; the kept step is the target's exactly when A = PRM(t) - PRM(d) > tau, the
    record says so, and the trajectory continues with that step."""
    for name in ("oracle", "generate"):
        models, done, _ = run(name)
        n = sum(len(r.steps) for r in done)
        assert models.draft.n_requests == models.target.n_requests == n
        chose_target = 0
        for r in done:
            for rec, step in zip(r.records, r.steps):
                s = rec.scores
                assert s["advantage"] == pytest.approx(s["prm_target"] - s["prm_draft"])
                assert rec.escalated == (s["advantage"] > 0)
                want = "target" if s["advantage"] > 0 else "draft"
                assert rec.author == step.author == want and step.text.startswith(want[0])
                chose_target += want == "target"
        assert 0 < chose_target < n  # both branches were taken (the fake PRM favours each on some steps)


def test_escalation_rate_counts_decisions_not_target_calls():
    from arbitrage.records import ProblemRecord
    from arbitrage.results import compute_metrics

    _, done, _ = run("oracle")
    recs = [
        ProblemRecord(
            r.problem.id,
            "q",
            "1",
            "1",
            True,
            "",
            "oracle",
            0.0,
            r.finish,
            r.latency_s,
            r.seconds,
            r.counts,
            r.solution,
            r.records,
        )
        for r in done
    ]
    m = compute_metrics(recs, "oracle", 0.0)
    steps = [rec for r in done for rec in r.records]
    assert m["target_calls"] == len(steps)  # the oracle calls the target on every step...
    assert m["escalation_rate"] == pytest.approx(sum(s.escalated for s in steps) / len(steps))  # ...not this
    assert m["escalation_rate"] < 1.0


def test_each_problem_ends_on_its_own_and_frees_its_place():
    models, done, engine = run("draft", concurrency=3)
    # every problem ran exactly its own number of steps and ended at end-of-sequence
    assert sorted((r.problem.id, len(r.steps), r.finish) for r in done) == sorted(
        (f"p{i}", n, "eos") for i, n in enumerate(LENGTHS)
    )
    # problems finish in order of length, not of the dataset: short ones leave first
    order = [r.problem.id for r in done]
    assert order.index("p1") < order.index("p0")
    # never more than `concurrency` in flight, and a freed place is refilled before the long problems end
    assert max(len(c) for c in models.draft.calls) == 3
    first_with_p3 = next(i for i, c in enumerate(models.draft.calls) if "p3" in c)
    last_with_p0 = max(i for i, c in enumerate(models.draft.calls) if "p0" in c)
    assert first_with_p3 < last_with_p0
    # each problem's state is released on every model as soon as it ends
    assert sorted(models.draft.released) == sorted(f"p{i}" for i in range(len(LENGTHS)))


def test_every_model_releases_every_finished_problem():
    models, done, _ = run("rsd", 0.5)
    for m in (models.draft, models.target, models.prm):
        assert sorted(m.released) == sorted(r.problem.id for r in done)


def test_problems_waiting_on_the_same_model_share_one_batched_call():
    models, done, engine = run("rsd", 0.5, lengths=[6] * 6, concurrency=6)
    assert max(len(c) for c in models.draft.calls) == 6 and max(len(c) for c in models.prm.calls) == 6
    # with identical problems every call carries all of them: no call per problem
    assert len(models.draft.calls) == 6


def test_max_steps_and_token_budget_end_a_problem():
    _, done, _ = run("draft", lengths=[50, 50], max_steps=4)
    assert all(r.finish == "max_steps" and len(r.steps) == 4 for r in done)
    _, done, _ = run("draft", lengths=[50], max_total_tokens=7)  # 3 tokens per step
    assert done[0].finish == "budget" and len(done[0].steps) == 3


def test_metrics_counts_and_seconds_are_recorded():
    _, done, _ = run("rsd", 0.5)
    for r in done:
        c = r.counts
        assert c["draft_tokens_accepted"] + c["draft_tokens_discarded"] == 3 * c["draft_calls"]
        assert c["target_tokens"] == 3 * c["target_calls"]
        assert r.latency_s >= 0 and set(r.seconds) == {"draft", "target", "prm", "router", "judge"}
        assert r.solution.endswith("\\boxed{1}")


class Slow(FakeGenerator):
    """A fake generator whose every batched call takes `delay` seconds (like a server at fixed latency)."""

    def __init__(self, *a, delay=0.02, lane=None, **kw):
        super().__init__(*a, **kw)
        self.delay = delay
        if lane is not None:
            self.lane = lane
        self.intervals: list[tuple[float, float]] = []

    def generate(self, requests):
        t0 = time.perf_counter()
        time.sleep(self.delay)
        out = super().generate(requests)
        self.intervals.append((t0, time.perf_counter()))
        return out


def test_latency_and_seconds_include_every_models_time():
    """A problem's latency covers the time its calls took on each model, and each model's seconds are booked to
    that model (every Pareto point and speed-up rests on this)."""
    by_key = {p.id: p.meta["n_steps"] for p in problems([3])}
    d, t = Slow("draft", by_key, delay=0.03), Slow("target", by_key, delay=0.06)
    models = Models(draft=d, target=t, router=FakeRouter())  # the router escalates step 0 only
    _, done, _ = run("router", 0.5, lengths=[3], concurrency=1, models=models)
    r = done[0]
    assert r.counts["target_calls"] == 1 and r.counts["draft_calls"] == 3
    assert r.seconds["target"] == pytest.approx(0.06, abs=0.03)
    assert r.seconds["draft"] == pytest.approx(0.09, abs=0.04)
    assert r.latency_s >= r.seconds["draft"] + r.seconds["target"] - 1e-6
    by_step = [rec.seconds for rec in r.records]
    assert "target" in by_step[0] and all("target" not in s for s in by_step[1:])


class StaggeredRouter(FakeRouter):
    """Escalates a different step of each problem, so problems are not in lock-step."""

    def predict(self, requests):
        self.calls.append([r.key for r in requests])
        return [0.9 if (len(r.steps) + int(r.key[1:])) % 3 == 0 else 0.1 for r in requests]


def _overlap(a, b) -> float:
    return sum(max(0.0, min(x1, y1) - max(x0, y0)) for x0, x1 in a for y0, y1 in b)


def test_models_on_different_lanes_work_at_the_same_time():
    """Draft and target on two servers (two lanes): while the target writes escalated steps for some problems,
    the draft serves others. On one lane (--serial-models, or in-process models on one device) never."""
    lengths = [6] * 8
    by_key = {p.id: p.meta["n_steps"] for p in problems(lengths)}

    def go(parallel: bool, lanes=("a", "b")):
        d = Slow("draft", by_key, delay=0.02, lane=lanes[0])
        t = Slow("target", by_key, delay=0.02, lane=lanes[1])
        models = Models(draft=d, target=t, router=StaggeredRouter())
        t0 = time.perf_counter()
        _, done, _ = run("router", 0.5, lengths=lengths, concurrency=8, models=models, parallel=parallel)
        return d, t, done, time.perf_counter() - t0

    d, t, done, wall_parallel = go(True)
    assert _overlap(d.intervals, t.intervals) > 0.02
    assert len(done) == 8 and t.n_requests == sum(r.counts["target_calls"] for r in done)
    d, t, done_serial, wall_serial = go(False)
    assert _overlap(d.intervals, t.intervals) == 0
    d, t, _, _ = go(True, lanes=("gpu0", "gpu0"))  # same lane: they take turns
    assert _overlap(d.intervals, t.intervals) == 0
    # the same decisions either way
    key = lambda res: sorted((r.problem.id, [s.text for s in r.steps]) for r in res)
    assert key(done) == key(done_serial)


def test_served_problems_can_be_submitted_while_running_and_cancelled():
    by_key = {"p0": 50, "p1": 50, "p2": 2, "p3": 50}
    d = Slow("draft", by_key, delay=0.01)
    cancelled_on_model = []
    d.cancel = cancelled_on_model.append
    engine = Engine(make_policy("draft"), Models(draft=d), EngineConfig(concurrency=2, max_steps=50))
    engine.start()
    try:
        probs = problems([50, 50, 2, 50])
        tickets = [engine.submit(p) for p in probs[:2]]
        time.sleep(0.05)
        late = engine.submit(probs[2])  # submitted while the others run; waits for a place, then runs
        tickets[0].cancel()
        assert tickets[0].wait(5) is None  # cancelled: no result
        res = late.wait(10)
        assert res.finish == "eos" and len(res.steps) == 2
        tickets[1].cancel()
        queued = engine.submit(probs[3])
        queued.cancel()
        assert queued.wait(5) is None
        deadline = time.time() + 5
        while engine.in_flight and time.time() < deadline:
            time.sleep(0.01)
        assert engine.in_flight == 0
        assert "p0" in d.released and "p1" in d.released  # cancelled problems' state is released
        assert set(cancelled_on_model) <= {"p0", "p1"}
    finally:
        engine.stop()


def test_per_problem_limits_and_stop_strings():
    by_key = {"p0": 50, "p1": 50}
    engine_models = Models(draft=FakeGenerator("draft", by_key))
    engine = Engine(make_policy("draft"), engine_models, EngineConfig(concurrency=2))
    engine.start()
    try:
        a = engine.submit(problems([50])[0], limits=Limits(max_steps=2))
        b = engine.submit(problems([50, 50])[1], limits=Limits(stop=("d3",)))
        ra, rb = a.wait(5), b.wait(5)
    finally:
        engine.stop()
    assert ra.finish == "max_steps" and len(ra.steps) == 2
    assert rb.finish == "stop" and rb.solution == "d0\n\nd1\n\nd2\n\n"  # cut where the stop string begins


def test_missing_model_is_a_config_error():
    with pytest.raises(ConfigError, match="router"):
        Engine(make_policy("router", 0.5), Models(draft=FakeGenerator("draft", {}), target=FakeGenerator("target", {})))


def test_a_model_error_stops_the_run_with_that_error():
    class Broken(FakeGenerator):
        def generate(self, requests):
            raise RuntimeError("server exploded")

    by_key = {"p0": 3}
    with pytest.raises(RuntimeError, match="exploded"):
        Engine(make_policy("draft"), Models(draft=Broken("draft", by_key))).run(problems([3]), lambda r: None)
    assert threading.active_count() < 50


class TieRouter:
    """y_hat exactly 0.5 at every step: a tie with tau = 0.5."""

    name = "router"

    def predict(self, requests):
        return [0.5] * len(requests)

    def release(self, key):
        pass


def test_a_router_tie_keeps_the_draft_step():
    probs = problems([3, 2])
    by_key = {p.id: p.meta["n_steps"] for p in probs}
    models = Models(draft=FakeGenerator("draft", by_key), target=FakeGenerator("target", by_key), router=TieRouter())
    done = []
    Engine(make_policy("router", 0.5), models, EngineConfig()).run(probs, done.append)
    assert all(not rec.escalated for r in done for rec in r.records)  # escalate iff y_hat > tau, never on a tie
    assert models.target.n_requests == 0
    done = []
    Engine(make_policy("router", 0.4999), models, EngineConfig()).run(problems([2]), done.append)
    assert all(rec.escalated for r in done for rec in r.records)


def test_each_step_is_capped_by_what_is_left_of_the_token_budget():
    probs = problems([10])
    by_key = {p.id: 10 for p in probs}
    draft = FakeGenerator("draft", by_key, tokens_per_step=4)
    done = []
    Engine(make_policy("draft"), Models(draft=draft), EngineConfig(max_total_tokens=10, max_step_tokens=8)).run(
        probs, done.append
    )
    assert [w for _, _, w in draft.written] == [4, 4, 2]  # the third step may only write the 2 tokens left
    assert done[0].finish == "budget" and sum(s.n_tokens for s in done[0].steps) == 10
