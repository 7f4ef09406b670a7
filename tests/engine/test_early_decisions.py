"""Deciding before the draft finishes (glimpse, router --decide-after K) and the training-free baselines
(confidence, confidence-min, glimpse): decisions exactly where the statistic crosses tau, an escalated glimpse
costs the draft its first tokens only, and a kept step's continuation recomputes nothing and equals the step the
draft writes in one go."""

from __future__ import annotations

import pytest

from arbitrage.engine import Engine, EngineConfig, Models
from arbitrage.errors import ConfigError
from arbitrage.model_calls import to_step
from arbitrage.policies import make_policy
from arbitrage.testing.fakes import FakeGenerator, FakeRouter, ForwardTokens, problems
from arbitrage.types import Problem

LENGTHS = [4, 3, 5]


def scripted_logprobs(key: str, i: int) -> list[float]:
    """Four tokens per step; the first token's log-prob (so its entropy, its negative) varies per step."""
    first = [-0.05, -2.0, -0.3, -4.0, -0.8][(i + int(key[1:])) % 5]
    return [first, -0.1, -0.2, -0.1]


def run(policy, lengths=LENGTHS, router=None):
    probs = problems(lengths)
    by_key = {p.id: p.meta["n_steps"] for p in probs}
    draft = FakeGenerator("draft", by_key, logprobs=scripted_logprobs)
    target = FakeGenerator("target", by_key)
    models = Models(draft=draft, target=target, router=router)
    done = []
    Engine(policy, Models(**{r: getattr(models, r) for r in policy.needs}), EngineConfig(concurrency=2)).run(
        probs, done.append
    )
    return draft, target, done


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 3.0])
def test_glimpse_escalates_exactly_when_the_first_tokens_entropy_exceeds_tau(tau):
    draft, target, done = run(make_policy("glimpse", tau))
    for r in done:
        for rec in r.records:
            h = -scripted_logprobs(r.problem.id, rec.index)[0]
            assert rec.scores["first_token_entropy"] == pytest.approx(h)
            assert rec.escalated == (h > tau) == (rec.author == "target")
            # an escalated step cost the draft its first token only; a kept one nothing
            assert rec.discarded_draft_tokens == (1 if rec.escalated else 0)
    # the draft wrote one token per step, then (kept steps only) the rest from where it stopped
    by_step = {}
    for key, i, n in draft.written:
        by_step.setdefault((key, i), []).append(n)
    for r in done:
        for rec in r.records:
            assert by_step[(r.problem.id, rec.index)] == ([1] if rec.escalated else [1, 3])
    assert target.n_requests == sum(rec.escalated for r in done for rec in r.records)


@pytest.mark.parametrize(
    "name,stat,tau",
    [
        ("confidence", lambda lps: sum(lps) / len(lps), -0.3),
        ("confidence", lambda lps: sum(lps) / len(lps), -0.7),
        ("confidence-min", min, -1.0),
        ("confidence-min", min, -0.5),
    ],
)
def test_confidence_escalates_exactly_when_the_statistic_is_below_tau(name, stat, tau):
    draft, target, done = run(make_policy(name, tau))
    seen = set()
    for r in done:
        for rec in r.records:
            s = stat(scripted_logprobs(r.problem.id, rec.index))
            assert rec.escalated == (s < tau) == (rec.author == "target")
            assert rec.discarded_draft_tokens == (4 if rec.escalated else 0)  # a whole draft step
            seen.add(rec.escalated)
    assert seen == {True, False}


def test_router_deciding_after_k_tokens_reads_only_those():
    class LengthRouter(FakeRouter):
        decide_after = 2  # trained on the first 2 tokens: the policy must decide after as many

        def predict(self, requests):
            self.calls.append([r.draft.n_tokens for r in requests])
            return [0.9 if len(r.steps) % 2 else 0.1 for r in requests]

    router = LengthRouter()
    with pytest.raises(ConfigError, match="--decide-after 2"):
        run(make_policy("router", 0.5), router=router)
    _, target, done = run(make_policy("router", 0.5, decide_after=2), router=router)
    assert {n for call in router.calls for n in call} == {2}  # the router saw 2-token glimpses
    for r in done:
        for rec in r.records:
            assert rec.escalated == (rec.index % 2 == 1)
            assert rec.discarded_draft_tokens == (2 if rec.escalated else 0)
            assert rec.author == ("target" if rec.escalated else "draft")
            if not rec.escalated:
                assert rec.n_tokens == 4 and rec.text.startswith("d")


def test_a_kept_glimpse_continues_from_the_cache_and_equals_the_step_written_at_once(tiny_dir):
    """Real tiny models: glimpse one token, continue; the step equals the one-go step (greedy), and the
    continuation computes exactly one token before decoding (the glimpsed token, never computed before)."""
    from arbitrage.backends.hf import HFGenerator
    from arbitrage.types import GenerationRequest

    gen = HFGenerator.from_pretrained(str(tiny_dir / "draft"), name="draft", device="cpu")
    gen.eos_ids = set()
    prompts = ["Question: what is 3 + 4?\n\n", "Let x = 5. Then 2 * x is?\n\n"]
    once = gen.generate([GenerationRequest(f"a{i}", p, [], 12) for i, p in enumerate(prompts)])
    glimpses = gen.generate([GenerationRequest(f"b{i}", p, [], 1) for i, p in enumerate(prompts)])
    steps = [to_step("draft", g) for g in glimpses]
    assert all(s.n_tokens == 1 for s in steps)
    with ForwardTokens(gen.model) as seen:
        rest = gen.generate(
            [GenerationRequest(f"b{i}", p, [], 11, prefix=s) for i, (p, s) in enumerate(zip(prompts, steps))]
        )
    assert seen.calls[0] == [1, 1]  # the prefill of the continuation: one token per row, nothing recomputed
    for a, b in zip(once, rest):
        assert (b.text, b.stop, b.token_ids) == (a.text, a.stop, a.token_ids)
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-5)
        assert b.extras["entropies"] == pytest.approx(a.extras["entropies"], abs=1e-4)


def test_glimpse_policy_on_real_models_matches_the_draft_where_it_keeps(tiny_dir):
    """End to end on tiny models: the kept steps of `glimpse` are the steps `draft` writes at the same point."""
    from arbitrage.backends.hf import HFGenerator

    d = HFGenerator.from_pretrained(str(tiny_dir / "draft"), name="draft", device="cpu")
    t = HFGenerator.from_pretrained(str(tiny_dir / "target"), name="target", device="cpu")
    for g in (d, t):
        g.eos_ids = set()
    probs = [Problem(f"p{i}", q, f"Question: {q}\n\n") for i, q in enumerate(["What is 3 + 4?", "12 * 12 = ?"])]
    cfg = EngineConfig(max_steps=3, max_step_tokens=10, concurrency=2)
    done = []
    Engine(make_policy("glimpse", 20.0), Models(draft=d, target=t), cfg).run(probs, done.append)  # never escalates
    ref = []
    Engine(make_policy("draft"), Models(draft=d), cfg).run(probs, ref.append)
    by = {r.problem.id: [s.text for s in r.steps] for r in ref}
    assert {r.problem.id: [s.text for s in r.steps] for r in done} == by
