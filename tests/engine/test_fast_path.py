"""The fast decoding path (static KV cache, compiled decode step): the same greedy steps as the plain path,
token for token, with each problem's cache kept in its slot between steps and only new tokens prefilled."""

from __future__ import annotations

import pytest

from arbitrage.backends.hf import HFGenerator
from arbitrage.engine import Engine, EngineConfig, Models
from arbitrage.model_calls import to_step
from arbitrage.policies import make_policy
from arbitrage.testing import EveryOtherRouter
from arbitrage.testing.fakes import ForwardTokens
from arbitrage.types import GenerationRequest, Problem

QUESTIONS = ["What is 3 + 4?", "Let x = 5. Then 2 * x is?", "12 * 12 = ?", "Compute 1/2 + 1/3."]


def generators(tiny_dir, **kw):
    d = HFGenerator.from_pretrained(str(tiny_dir / "draft"), name="draft", device="cpu", **kw)
    t = HFGenerator.from_pretrained(str(tiny_dir / "target"), name="target", device="cpu", **kw)
    for g in (d, t):
        g.eos_ids = set()  # random models: never end a problem at its first step
    return d, t


def run(tiny_dir, concurrency=4, **kw):
    d, t = generators(tiny_dir, **kw)
    done = []
    probs = [Problem(f"p{i}", q, f"Question: {q}\n\n") for i, q in enumerate(QUESTIONS)]
    Engine(
        make_policy("router", 0.5),
        Models(draft=d, target=t, router=EveryOtherRouter()),
        EngineConfig(max_steps=5, max_step_tokens=12, concurrency=concurrency),
    ).run(probs, done.append)
    return {r.problem.id: [(s.author, s.text, s.stop, s.token_ids) for s in r.steps] for r in done}, d, t


def test_static_cache_steps_equal_the_plain_paths(tiny_dir):
    plain, _, _ = run(tiny_dir)
    static, d, t = run(tiny_dir, static_slots=4, static_len=256, compile=False)
    assert static == plain
    assert any(a == "target" for steps in static.values() for a, *_ in steps)
    assert all(not ids for ids in d.static.slot_ids) and not d.static.slot_of  # every finished problem freed its slot


def test_compiled_decode_equals_the_plain_path_and_compiles_once(tiny_dir):
    plain, _, _ = run(tiny_dir, concurrency=2)
    compiled, d, t = run(tiny_dir, concurrency=2, static_slots=2, static_len=256, compile=True)
    assert compiled == plain
    assert d.static.compiled_calls > 10 and d.static._decode is not None  # one compiled step, reused every token


def test_static_prefill_computes_only_the_new_tokens(tiny_dir):
    d, _ = generators(tiny_dir, static_slots=2, static_len=256, compile=False)
    prompt = "Question: what is 3 + 4?\n\n"
    (first,) = d.generate([GenerationRequest("k", prompt, [], 6)])
    step = to_step("draft", first)
    other = to_step("target", d.generate([GenerationRequest("z", "Other: 1\n\n", [], 5)])[0])
    other.author, other.extras = "target", {}  # a step written by another model: re-tokenized here
    with ForwardTokens(d.model, pad_id=d.pad_id) as seen:
        (second,) = d.generate([GenerationRequest("k", prompt, [step, other], 6)])
    context = d.context_ids(prompt, [step])
    appended = len(d.context_ids(prompt, [step, other])) - len(context)
    # the slot holds the prompt and the first step but for its last sampled token: that token and the other
    # model's step are all that is computed
    assert seen.calls[0] == [1 + appended]
    assert second.n_reused == len(context) - 1


def test_slots_run_out_clearly(tiny_dir):
    d, _ = generators(tiny_dir, static_slots=1, static_len=64, compile=False)
    d.generate([GenerationRequest("a", "Q: 1\n\n", [], 2)])
    with pytest.raises(RuntimeError, match="slots are taken"):
        d.generate([GenerationRequest("b", "Q: 2\n\n", [], 2)])
    d.release("a")
    d.generate([GenerationRequest("b", "Q: 2\n\n", [], 2)])
