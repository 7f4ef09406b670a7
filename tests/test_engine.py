"""The step engine with scripted models: who is called, how often, in which batches, and when problems end."""

import pytest

from arbitrage.engine import Engine, EngineConfig, Models
from arbitrage.errors import ConfigError
from arbitrage.policies import make_policy
from fakes import FakeGenerator, FakePRM, FakeRouter, problems

LENGTHS = [5, 1, 7, 3, 2, 6]


def run(policy_name, threshold=None, lengths=LENGTHS, concurrency=3, **cfg):
    probs = problems(lengths)
    by_key = {p.id: p.meta["n_steps"] for p in probs}
    models = Models(draft=FakeGenerator("draft", by_key), target=FakeGenerator("target", by_key), prm=FakePRM(),
                    router=FakeRouter())
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
    assert escalated == sum(rec["escalated"] for r in done for rec in r.records)
    assert all(rec["author"] == ("target" if rec["escalated"] else "draft") for r in done for rec in r.records)


def test_rsd_and_router_decisions_follow_the_scores():
    _, done, _ = run("rsd", 0.5)
    for r in done:
        for rec in r.records:  # the fake PRM gives the draft 0.9 at even steps and 0.2 at odd ones
            assert rec["escalated"] == (rec["index"] % 2 == 1)
            assert rec["scores"]["prm_draft"] == (0.9 if rec["index"] % 2 == 0 else 0.2)
    _, done, _ = run("router", 0.5)
    for r in done:
        for rec in r.records:
            assert rec["escalated"] == (rec["index"] % 3 == 0)


def test_target_policy_never_calls_draft_and_draft_policy_calls_only_draft():
    models, done, _ = run("target")
    assert models.draft.calls == [] and models.prm.calls == [] and models.router.calls == []
    assert models.target.n_requests == sum(len(r.steps) for r in done) == sum(LENGTHS)
    models, done, _ = run("draft")
    assert models.target.calls == [] and models.prm.calls == [] and models.router.calls == []
    assert all(r.counts["target_calls"] == 0 and r.counts["draft_tokens_discarded"] == 0 for r in done)


def test_oracle_and_generate_call_both_models_every_step():
    for name in ("oracle", "generate"):
        models, done, _ = run(name)
        n = sum(len(r.steps) for r in done)
        assert models.draft.n_requests == models.target.n_requests == n
        for r in done:
            for rec in r.records:
                s = rec["scores"]
                assert s["advantage"] == pytest.approx(s["prm_target"] - s["prm_draft"])
                assert rec["escalated"] == (s["advantage"] > 0)


def test_each_problem_ends_on_its_own_and_frees_its_place():
    models, done, engine = run("draft", concurrency=3)
    # every problem ran exactly its own number of steps and ended at end-of-sequence
    assert sorted((r.problem.id, len(r.steps), r.finish) for r in done) == \
        sorted((f"p{i}", n, "eos") for i, n in enumerate(LENGTHS))
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


def test_problems_waiting_on_the_same_model_share_one_batched_call():
    models, done, engine = run("rsd", 0.5, lengths=[6] * 6, concurrency=6)
    assert max(engine.batch_sizes["draft"]) == 6 and max(engine.batch_sizes["prm"]) == 6
    # with identical problems every call carries all of them: no call per problem
    assert engine.call_counts["draft"] == 6


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
        assert r.latency_s >= 0 and set(r.seconds) == {"draft", "target", "prm", "router"}
        assert r.solution.endswith("\\boxed{1}")


def test_missing_model_is_a_config_error():
    with pytest.raises(ConfigError, match="router"):
        Engine(make_policy("router", 0.5), Models(draft=FakeGenerator("draft", {}),
                                                  target=FakeGenerator("target", {})))
