"""Escalations that reuse the draft's work (backends/speculative.py): greedy steps are token for token the
target's own for every policy that escalates (with and without in-step speculation, one problem or a batch whose
rows accept different numbers of tokens), sampled steps are distributed exactly as the target's (chi-square over
many seeded draws on tiny models with an 8-token vocabulary), and the counts reach the records and metrics."""

from __future__ import annotations

import collections

import pytest
import torch

from arbitrage.engine import Engine, EngineConfig, Models
from arbitrage.factory import ModelOptions, build_models, link_speculation
from arbitrage.policies import make_policy
from arbitrage.testbed.task import make_problems
from arbitrage.testing import ShareRouter

LIMITS = dict(max_steps=10, max_step_tokens=48, max_total_tokens=320)
PROBLEMS = make_problems("test", 12, seed=4)


@pytest.fixture(scope="module")
def testbed():
    models = build_models(
        {"draft", "target", "prm"},
        {"draft": "testbed:draft", "target": "testbed:target", "prm": "testbed-checker:0.1:0.1"},
        ModelOptions(device="cpu", dtype="float32"),
    )
    models.router = ShareRouter(0.5)
    models.judge = models.target
    return models


def solve(models, policy, threshold=None, verify=True, gamma=4, concurrency=1, problems=PROBLEMS, **options):
    pol = make_policy(policy, threshold, **options)
    done = []
    Engine(
        pol,
        Models(**{r: getattr(models, r) for r in pol.needs}),
        EngineConfig(**LIMITS, concurrency=concurrency, verify=verify, gamma=gamma),
    ).run(problems, done.append)
    return {r.problem.id: r for r in done}


ESCALATING = [
    ("rsd", 0.5, {}),
    ("router", 0.5, {}),
    ("oracle", 0.0, {}),
    ("generate", None, {}),
    ("confidence", -0.02, {}),
    ("glimpse", 0.001, {}),
    ("specreason", 7.0, {}),
]


@pytest.mark.parametrize("policy,tau,opts", ESCALATING)
def test_greedy_escalations_are_the_targets_own_steps(testbed, policy, tau, opts):
    plain = solve(testbed, policy, tau, verify=False, **opts)
    for gamma, concurrency in ((0, 1), (4, 1), (3, 6)):
        spec = solve(testbed, policy, tau, gamma=gamma, concurrency=concurrency, **opts)
        assert {k: r.solution for k, r in spec.items()} == {k: r.solution for k, r in plain.items()}, (
            gamma,
            concurrency,
        )
        counts = [rec.speculation for r in spec.values() for rec in r.records if rec.speculation]
        assert counts, "no target step was written with speculation"
        assert sum(c["proposed"] for c in counts) > 0 and sum(c["kept"] for c in counts) > 0
        for c in counts:
            assert 0 <= c["kept"] <= c["proposed"] and c["target_forwards"] >= 1
            if gamma == 0:
                assert c["draft_speculated"] == 0


def test_the_router_deciding_early_verifies_its_glimpse(testbed):
    from arbitrage.testing import ShareRouter as Scripted

    class EarlyRouter(Scripted):
        decide_after = 2

    models = Models(draft=testbed.draft, target=testbed.target, router=EarlyRouter(0.5))
    plain = solve(models, "router", 0.5, verify=False, decide_after=2)
    spec = solve(models, "router", 0.5, decide_after=2)
    assert {k: r.solution for k, r in spec.items()} == {k: r.solution for k, r in plain.items()}
    proposed = [rec.speculation["proposed"] for r in spec.values() for rec in r.records if rec.speculation]
    assert proposed and max(proposed) <= 2  # only the glimpse's two tokens were there to verify


def test_target_only_with_in_step_speculation_is_the_target_alone(testbed):
    plain = solve(testbed, "target")
    for concurrency in (1, 5):
        spec = solve(testbed, "target", concurrency=concurrency, speculate=True)
        assert {k: r.solution for k, r in spec.items()} == {k: r.solution for k, r in plain.items()}
        counts = [rec.speculation for r in spec.values() for rec in r.records]
        assert all(c is not None for c in counts)
        speculated = sum(c["draft_speculated"] for c in counts)
        accepted = sum(c["draft_accepted"] for c in counts)
        forwards = sum(c["target_forwards"] for c in counts)
        tokens = sum(rec.n_tokens for r in spec.values() for rec in r.records)
        assert 0 < accepted <= speculated and forwards < tokens  # fewer target passes than tokens written
    assert all(rec.speculation is None for r in plain.values() for rec in r.records)  # the option is off by default


def test_metrics_report_acceptance_and_forwards(testbed, tmp_path):
    from arbitrage.run import RunConfig, run

    probs = make_problems("test", 6, seed=9)
    cfg = RunConfig(
        policy="rsd",
        threshold=0.5,
        out=str(tmp_path / "rsd"),
        progress=False,
        engine=EngineConfig(**LIMITS, concurrency=2),
    )
    m = run(cfg, models=Models(draft=testbed.draft, target=testbed.target, prm=testbed.prm), problems=probs)
    s = m["speculation"]
    assert 0 < s["acceptance_rate"] <= 1 and s["kept"] <= s["proposed"]
    assert s["target_steps"] > 0 and s["target_forwards_per_target_step"] >= 1
    assert s["target_written"] + s["kept"] + s["draft_accepted"] == m["target_tokens"]


# ---------------------------------------------------------------- sampling: exactly the target's distribution

VOCAB = ["<pad>", "<s>", "</s>", "a", "b", "c", "d", "e"]


def tiny_pair(tmp_path):
    """Two random Llama LMs over an 8-token vocabulary (draft and target differ), as HFGenerators."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tm
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from arbitrage.backends.hf import HFGenerator

    tok = Tokenizer(tm.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    gens = []
    for seed, name in ((1, "draft"), (2, "target")):
        torch.manual_seed(seed)
        cfg = LlamaConfig(
            vocab_size=len(VOCAB),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            eos_token_id=2,
            bos_token_id=1,
            pad_token_id=0,
            initializer_range=0.6,
        )
        model = LlamaForCausalLM(cfg).eval()
        gens.append(HFGenerator(model, fast, name=name, separator="\n\n", temperature=1.0, seed=0))
    draft, target = gens
    link_speculation(Models(draft=draft, target=target))
    return draft, target


PROMPT = "a b c"


def exact(target, length: int) -> dict[tuple, float]:
    """The target's distribution over its first `length` tokens after PROMPT (a sequence ends early at eos)."""
    ids = target.context_ids(PROMPT, [])
    out: dict[tuple, float] = {}

    def walk(prefix: tuple, p: float):
        with torch.no_grad():
            logits = target.model(torch.tensor([ids + list(prefix)])).logits[0, -1]
        for tok, q in enumerate(torch.softmax(logits.double(), -1).tolist()):
            seq = prefix + (tok,)
            if tok == 2 or len(seq) == length:
                out[seq] = out.get(seq, 0.0) + p * q
            else:
                walk(seq, p * q)

    walk((), 1.0)
    return out


def chi_square_p(counts: collections.Counter, expected: dict[tuple, float], n: int) -> float:
    from scipy.stats import chisquare

    keys = sorted(expected, key=lambda k: -expected[k])
    big = [k for k in keys if expected[k] * n >= 5]
    obs = [counts.get(k, 0) for k in big] + [n - sum(counts.get(k, 0) for k in big)]
    exp = [expected[k] * n for k in big] + [n - sum(expected[k] * n for k in big)]
    return float(chisquare(obs, exp).pvalue)


def outcomes(results) -> collections.Counter:
    c = collections.Counter()
    for g in results:
        c[tuple(g.token_ids) + ((2,) if g.stop == "eos" else ())] += 1  # an eos ends the step (not in its ids)
    return c


N = 6000


def draws(draft, target, speculate_with_proposal: bool, gamma: int):
    from arbitrage.types import GenerationRequest, Sampling, Step

    results = []
    for start in range(0, N, 500):
        keys = [f"s{i}" for i in range(start, start + 500)]
        sampling = [Sampling(temperature=1.0, seed=i) for i in range(start, start + 500)]
        specs = [None] * len(keys)
        if speculate_with_proposal:
            props = draft.generate([GenerationRequest(k, PROMPT, [], 2, sampling=s) for k, s in zip(keys, sampling)])
            specs = [
                Step("draft", g.text, g.stop, len(g.token_ids), token_ids=g.token_ids, extras=dict(g.extras))
                for g in props
            ]
        # sample=0 for both, as the engine asks: the same seed for the draft's step and the target's
        reqs = [
            GenerationRequest(k, PROMPT, [], 2, sampling=s, speculation=sp, gamma=gamma)
            for k, s, sp in zip(keys, sampling, specs)
        ]
        results += target.generate(reqs)
        for k in keys:
            draft.release(k)
            target.release(k)
    return outcomes(results)


@pytest.mark.parametrize("mode", ["verified proposal", "in-step speculation"])
def test_sampled_steps_are_distributed_as_the_targets(tmp_path, mode):
    draft, target = tiny_pair(tmp_path)
    expected = exact(target, 2)
    got = draws(
        draft,
        target,
        speculate_with_proposal=mode == "verified proposal",
        gamma=0 if mode == "verified proposal" else 1,
    )
    assert sum(got.values()) == N
    p = chi_square_p(got, expected, N)
    assert p > 1e-3, f"p = {p:.2e}: the steps are not distributed as the target's"
    # the draft's own distribution is far from it: the test can tell them apart
    assert chi_square_p(draws_from_draft(draft), expected, N) < 1e-6


def draws_from_draft(draft) -> collections.Counter:
    from arbitrage.types import GenerationRequest, Sampling

    out = []
    for start in range(0, N, 500):
        reqs = [
            GenerationRequest(f"d{i}", PROMPT, [], 2, sampling=Sampling(temperature=1.0, seed=i))
            for i in range(start, start + 500)
        ]
        out += draft.generate(reqs)
        for r in reqs:
            draft.release(r.key)
    return outcomes(out)
