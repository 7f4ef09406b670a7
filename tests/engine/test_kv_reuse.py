"""In-process backend: a problem's KV cache survives between its steps, and only new tokens are prefilled.

The checks run a real policy (draft and target alternating, so each model must append steps written by the
other) on tiny random Qwen2 models, once with cache reuse and once without, and compare.
"""

import pytest
import torch

from arbitrage.backends.hf import HFGenerator
from arbitrage.engine import Engine, EngineConfig, Models
from arbitrage.policies import make_policy
from arbitrage.scoring.hf import HFPRM, HFRouter
from arbitrage.testing import EveryOtherRouter
from arbitrage.testing.fakes import ForwardTokens
from arbitrage.types import GenerationRequest, Problem, RouteRequest, ScoreRequest, Step

QUESTIONS = ["What is 3 + 4?", "Let x = 5. Then 2 * x is?", "12 * 12 = ?", "Compute 1/2 + 1/3."]


def problems():
    return [Problem(id=f"p{i}", question=q, prompt=f"Question: {q}\n\n", gold="1") for i, q in enumerate(QUESTIONS)]


def generators(tiny_dir, reuse, **kw):
    d = HFGenerator.from_pretrained(str(tiny_dir / "draft"), name="draft", reuse_cache=reuse, device="cpu", **kw)
    t = HFGenerator.from_pretrained(str(tiny_dir / "target"), name="target", reuse_cache=reuse, device="cpu", **kw)
    return d, t


def run_alternating(tiny_dir, reuse, concurrency=4, verify=True, **kw):
    """The router policy with a router that escalates every other step: both models extend each context."""

    d, t = generators(tiny_dir, reuse, **kw)
    for g in (d, t):  # random models: keep them from ending a problem at its first step, whatever the version
        g.eos_ids = set()
    done = []
    Engine(
        make_policy("router", 0.5),
        Models(draft=d, target=t, router=EveryOtherRouter()),
        EngineConfig(max_steps=5, max_step_tokens=12, concurrency=concurrency, verify=verify),
    ).run(problems(), done.append)
    return {r.problem.id: [(s.author, s.text, s.stop) for s in r.steps] for r in done}, d, t


def test_greedy_output_with_reuse_equals_output_without(tiny_dir):
    with_reuse, _, _ = run_alternating(tiny_dir, True)
    without, _, _ = run_alternating(tiny_dir, False)
    assert with_reuse == without
    assert any(a == "target" for steps in with_reuse.values() for a, _, _ in steps)  # both models wrote steps
    assert sum(len(v) for v in with_reuse.values()) > len(QUESTIONS)  # more than one step per problem


def test_batched_greedy_equals_one_problem_at_a_time(tiny_dir):
    batched, _, _ = run_alternating(tiny_dir, True, concurrency=4)
    single, _, _ = run_alternating(tiny_dir, True, concurrency=1)
    assert batched == single


def test_each_step_prefills_only_the_new_tokens(tiny_dir, monkeypatch):
    """Every call reuses all of the problem's context that this model has cached (the context up to where it
    differs: a discarded proposal of its own is dropped, the other model's step is new) and prefills the rest."""
    from arbitrage.backends.kv import SlotStore, common_prefix

    cached: dict[tuple[int, str], list[int]] = {}  # (store, key) -> ids whose keys/values it holds
    put, context_ids = SlotStore.put, HFGenerator.context_ids

    def spy_put(self, key, entry):
        cached[(id(self), key)] = list(entry.ids)
        return put(self, key, entry)

    calls = []

    def spy_generate(self, requests, _gen=HFGenerator.generate):
        before = {r.key: list(cached.get((id(self.store), r.key), [])) for r in requests}
        with ForwardTokens(self.model) as seen:  # what reaches the model, not what the backend reports
            out = _gen(self, requests)
        prefill = seen.calls[0]  # the first forward pass of a call is the batched prefill, one row per request
        for r, computed in zip(requests, prefill):
            calls.append((self.name, before[r.key], context_ids(self, r.prompt, r.steps), computed))
        return out

    monkeypatch.setattr(SlotStore, "put", spy_put)
    monkeypatch.setattr(HFGenerator, "generate", spy_generate)
    run_alternating(tiny_dir, True, concurrency=2, verify=False)  # verification prefills the proposal too
    assert len(calls) > 2 * len(QUESTIONS)
    for name, before, ids, computed in calls:
        reusable = min(common_prefix(before, ids), len(ids) - 1)
        assert computed == len(ids) - reusable, (name, computed, len(ids), reusable)
    # later steps prefill a small part of their context: the new tokens, not the whole context again
    later = [(len(ids), computed) for _, before, ids, computed in calls if before]
    assert later and all(p < n for n, p in later)
    assert sum(p for _, p in later) < sum(n for n, _ in later) / 2


def test_without_reuse_every_step_prefills_the_whole_context(tiny_dir, monkeypatch):
    seen = []

    def spy_generate(self, requests, _gen=HFGenerator.generate):
        with ForwardTokens(self.model) as f:
            out = _gen(self, requests)
        seen.extend(zip((len(self.context_ids(r.prompt, r.steps)) for r in requests), f.calls[0]))
        return out

    monkeypatch.setattr(HFGenerator, "generate", spy_generate)
    run_alternating(tiny_dir, False, concurrency=1, verify=False)  # verification prefills the proposal too
    assert all(computed == n for n, computed in seen)
    assert max(n for n, _ in seen) > 20


def test_finished_problems_release_their_caches(tiny_dir):
    _, d, t = run_alternating(tiny_dir, True, concurrency=2)
    assert len(d.store) == 0 and len(t.store) == 0


def test_sampled_generation_is_seeded_per_problem_and_step(tiny_dir):
    a, _, _ = run_alternating(tiny_dir, True, temperature=1.0, seed=7)
    b, _, _ = run_alternating(tiny_dir, True, temperature=1.0, seed=7, concurrency=1)
    c, _, _ = run_alternating(tiny_dir, True, temperature=1.0, seed=8)
    assert a == b  # the same seed gives the same steps whatever the batching
    assert a != c


def _steps():
    return [Step("draft", "Let x = 3 + 4 = 7.", "separator", 8), Step("target", "Then 2 * 7 = 14.", "separator", 8)]


@pytest.mark.parametrize("prm", ["prm", "prm_cls"])
def test_prm_scores_with_cache_equal_scores_without(tiny_dir, prm):
    cached = HFPRM.from_pretrained(str(tiny_dir / prm), device="cpu", reuse_cache=True)
    plain = HFPRM.from_pretrained(str(tiny_dir / prm), device="cpu", reuse_cache=False)
    assert cached.kind == ("value-head" if prm == "prm" else "token-cls")
    steps = _steps()
    cands = (Step("draft", "So the answer is 14.", "separator", 6), Step("target", "\\boxed{14}", "eos", 4))
    for k in range(len(steps) + 1):  # score step k's candidates after steps[:k], as the engine does
        reqs = [
            ScoreRequest("a", "What is 2 * (3 + 4)?", steps[:k], cands),
            ScoreRequest("b", "What is 12 * 12?", steps[:k], cands[:1]),
        ]
        with ForwardTokens(cached.scorer.model) as fc, ForwardTokens(plain.scorer.model) as fp:
            got, want = cached.score(reqs), plain.score(reqs)
        assert [len(x) for x in got] == [2, 1]
        for g, w in zip(got, want):
            assert g == pytest.approx(w, abs=1e-5)
            assert all(0.0 <= x <= 1.0 for x in g)
    # later steps prefill only what is new: far fewer tokens than the whole row reach the model
    assert fc.total < fp.total / 2


def test_router_scores_with_cache_equal_scores_without(tiny_dir):
    cached = HFRouter.from_pretrained(str(tiny_dir / "router"), device="cpu", reuse_cache=True)
    plain = HFRouter.from_pretrained(str(tiny_dir / "router"), device="cpu", reuse_cache=False)
    steps = _steps()
    for k in range(len(steps) + 1):
        reqs = [RouteRequest("a", "What is 2 * (3 + 4)?", steps[:k], Step("draft", "So 14.", "separator", 3))]
        with ForwardTokens(cached.scorer.model) as fc, ForwardTokens(plain.scorer.model) as fp:
            assert cached.predict(reqs) == pytest.approx(plain.predict(reqs), abs=1e-5)
    assert fc.total < fp.total / 2


def test_bfloat16_runs_on_cpu(tiny_dir):
    g = HFGenerator.from_pretrained(str(tiny_dir / "draft"), name="draft", device="cpu", dtype="bfloat16")
    assert next(g.model.parameters()).dtype == torch.bfloat16
    from arbitrage.types import GenerationRequest

    (out,) = g.generate([GenerationRequest("k", "Question: 1 + 1?\n\n", [], 8)])
    assert out.stop in ("separator", "eos", "length") and len(out.logprobs) >= 1


def test_another_models_token_ids_are_not_reused_when_its_tokenizer_differs(tiny_dir):
    """A step written by a model with another tokenizer is re-tokenized by the reader, never read as its ids."""
    from arbitrage.factory import ModelOptions, build_models

    testbed = build_models({"draft"}, {"draft": "testbed:draft"}, ModelOptions(device="cpu")).draft
    reader = HFGenerator.from_pretrained(str(tiny_dir / "target"), name="target", device="cpu")
    prompt = "Question: Let a = 4. b = a + 3. What is b?\n\n"
    (g,) = testbed.generate([GenerationRequest("k", "Let a = 4. b = a + 3. What is b?\n\n", [], 16)])
    step = Step("draft", g.text, g.stop, len(g.token_ids), token_ids=g.token_ids, extras=dict(g.extras))
    assert step.token_ids and step.extras["generator"] == "draft"
    assert reader.context_ids(prompt, [step]) == list(reader.encode(prompt, True)) + list(
        reader.encode(step.context_text("\n\n"), False)
    )
    own = Step("target", "x", "separator", 1, token_ids=[7, 7, 7], extras={"generator": "target"})
    assert reader.context_ids(prompt, [own])[-3:] == [7, 7, 7]  # its own ids are reused as written
