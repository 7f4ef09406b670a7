"""Outside baselines: assisted generation is lossless; the SpecReason judge reads the same score as a plain
full forward pass (with and without cache reuse, batched); under specreason the target writes only the steps
judged below tau; the server judge sends a one-token request and reads top log-probs in each layout."""

import json
import math

import httpx
import pytest
import torch

from arbitrage.backends.hf import HFGenerator
from arbitrage.backends.openai_compat import OpenAICompletionsGenerator
from arbitrage.baselines.assisted import generate_one, split_steps
from arbitrage.baselines.specreason import SpecReason
from arbitrage.engine import Engine, EngineConfig, Models
from arbitrage.errors import ConfigError
from arbitrage.policies import make_policy
from arbitrage.run import RunConfig, run
from arbitrage.target_judge import JUDGE_QUESTION, digit_token_ids, expected_digit, merge_digit_logprobs
from arbitrage.testing import make_causal_lm
from arbitrage.testing.fakes import ForwardTokens
from arbitrage.timing import ForwardTimer
from arbitrage.types import JudgeRequest, Problem, Step

SEP = "\n\n"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A target and a draft that is the target with slightly perturbed weights: it agrees on many tokens but
    not all, so assisted generation both accepts and rejects draft tokens."""
    root = tmp_path_factory.mktemp("pair")
    model, tok = make_causal_lm(str(root / "target"), hidden=64, layers=2, seed=4, separator_bias=3.0, eos_bias=1.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1:
                p.add_(0.03 * p.std() * torch.randn(p.shape, generator=g))
    model.save_pretrained(str(root / "draft"))
    tok.save_pretrained(str(root / "draft"))
    return root


def load(root, role):
    return HFGenerator.from_pretrained(str(root / role), name=role, device="cpu", dtype="float32")


def test_assisted_output_equals_target_greedy(pair):
    draft, target = load(pair, "draft"), load(pair, "target")
    timers = (ForwardTimer(draft.model), ForwardTimer(target.model))
    accepted = discarded = 0
    for i, q in enumerate(["Question: what is 12 * 12?\n\n", "We compute \\frac{1}{2} + 3 =", "Let x = 3 + 4"]):
        p = Problem(f"p{i}", q, q)
        out = generate_one(draft, target, p, SEP, max_new_tokens=40, max_steps=100, timers=timers)
        ids = torch.tensor([list(target.encode(q, True))])
        with torch.no_grad():
            ref = target.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=40,
                eos_token_id=sorted(target.eos_ids),
                pad_token_id=target.pad_id,
            )[0, ids.shape[1] :].tolist()
        cut = next((j for j, t in enumerate(ref) if t in target.eos_ids), len(ref))
        assert out.solution == target.tokenizer.decode(ref[:cut]), f"problem {i}"
        assert out.counts["target_tokens"] == cut
        assert out.finish == ("eos" if cut < len(ref) else "budget")
        assert out.counts["draft_calls"] > 0 and out.counts["target_calls"] > 0
        assert out.seconds["draft"] > 0 and out.seconds["target"] > 0
        accepted += out.counts["draft_tokens_accepted"]
        discarded += out.counts["draft_tokens_discarded"]
    assert accepted > 0 and discarded > 0  # the draft was both right and wrong: the equality above means something
    for t in timers:
        t.remove()


def test_assisted_stops_at_max_steps_and_splits():
    assert split_steps("a\n\nb\n\nc", SEP, 5) == ([("a", "separator"), ("b", "separator"), ("c", "end")], False)
    assert split_steps("a\n\nb\n\nc", SEP, 2) == ([("a", "separator"), ("b", "separator")], True)
    assert split_steps("a\n\n", SEP, 5) == ([("a", "separator")], False)


def test_assisted_run_writes_layout_and_resumes(pair, tmp_path):
    from arbitrage.grading import Grader

    draft, target = load(pair, "draft"), load(pair, "target")
    cfg = RunConfig(
        policy="assisted",
        out=str(tmp_path / "a"),
        data="x",
        models={"draft": str(pair / "draft"), "target": str(pair / "target")},
    )
    cfg.engine = EngineConfig(max_steps=3, max_total_tokens=24)
    probs = [Problem("a", "1+1?", "Question: 1+1?\n\n", gold="2"), Problem("b", "2+2?", "Question: 2+2?\n\n", "4")]
    cfg.progress = False
    with Grader(timeout=10) as grader:
        m = run(cfg, models=Models(draft=draft, target=target), problems=probs, grader=grader)
        assert m["n"] == 2 and m["policy"] == "assisted" and m["escalation_rate"] is None
        assert 0 < m["token_acceptance_rate"] <= 1
        lines = [json.loads(x) for x in open(tmp_path / "a" / "results.jsonl")]
        assert [r["id"] for r in lines] == ["a", "b"]
        assert all(r["n_steps"] <= 3 and r["counts"]["target_tokens"] <= 24 for r in lines)
        again = run(cfg, problems=probs, grader=grader)  # finished: the same loop resumes, no models needed
    assert again["n"] == 2 and len(open(tmp_path / "a" / "results.jsonl").readlines()) == 2


# --- SpecReason judge ------------------------------------------------------------------------------------


def full_forward_score(gen: HFGenerator, prompt: str, steps, draft: Step, question: str) -> float:
    ids = list(gen.encode(prompt, True))
    for s in [*steps, draft]:
        ids += gen.encode(s.context_text(SEP), False)
    ids += gen.encode(question, False)
    with torch.no_grad():
        logits = gen.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    logp = torch.log_softmax(logits, -1)
    table = digit_token_ids(gen.tokenizer)
    return expected_digit({d: float(torch.logsumexp(logp[i], 0)) for d, i in table.items() if i})


def test_judge_score_equals_plain_full_forward(pair):
    target = load(pair, "target")
    s1, s2, s3 = (Step("draft", t, "separator", 4) for t in ("Let x = 3 + 4 = 7.", "Then 2 * 7 = 14.", "So 14."))
    pa, pb = "Question: what is 12 * 12?\n\n", "Q: 1/2 + 1/3?\n\n"
    Q = JUDGE_QUESTION
    first = target.judge([JudgeRequest("a", pa, [], s1, Q), JudgeRequest("b", pb, [s2], s3, Q)])  # batched
    assert first[0] == pytest.approx(full_forward_score(target, pa, [], s1, JUDGE_QUESTION), abs=1e-4)
    assert first[1] == pytest.approx(full_forward_score(target, pb, [s2], s3, JUDGE_QUESTION), abs=1e-4)
    with ForwardTokens(target.model) as seen:
        again = target.judge([JudgeRequest("a", pa, [s1], s2, Q)])  # the next step: reuses the cached prefix
    assert again[0] == pytest.approx(full_forward_score(target, pa, [s1], s2, JUDGE_QUESTION), abs=1e-4)
    # What reached the model: the cached context up to the end of s1 is reused; s1's step end (the judging
    # question followed it last time), s2 and the question are computed.
    cached = len(target.encode(pa, True)) + len(target.encode(s1.context_text(SEP), False))
    full = cached + len(target.encode(s2.context_text(SEP), False)) + len(target.encode(JUDGE_QUESTION, False))
    assert seen.calls == [[full - cached]]
    assert all(0.0 <= x <= 9.0 for x in first + again)


def test_expected_digit_and_merge():
    assert expected_digit({}) == 0.0
    assert expected_digit({2: math.log(0.5), 8: math.log(0.5)}) == pytest.approx(5.0)
    assert expected_digit({9: 0.0, 0: -math.inf}) == 9.0
    merged = merge_digit_logprobs([("7", math.log(0.2)), ("\u01207", math.log(0.3)), ("x", 0.0), (" 12", -1.0)])
    assert merged == {7: pytest.approx(math.log(0.5))}


class CountingTarget:
    """The real HF target; judge() answers a fixed pattern of scores so both branches are taken."""

    def __init__(self, gen: HFGenerator):
        self.gen, self.name, self.separator = gen, gen.name, gen.separator
        self.generated: dict[str, int] = {}
        self.judged: list[tuple[str, int, float]] = []

    def generate(self, reqs):
        for r in reqs:
            self.generated[r.key] = self.generated.get(r.key, 0) + 1
        return self.gen.generate(reqs)

    def judge(self, reqs):
        real = self.gen.judge(reqs)  # exercised, then replaced by the pattern
        scores = [2.0 if (len(r.steps) + int(r.key[-1])) % 2 else 8.0 for r in reqs]
        self.judged += [(r.key, len(r.steps), s) for r, s in zip(reqs, scores)]
        assert all(0 <= x <= 9 for x in real)
        return scores

    def release(self, key):
        self.gen.release(key)


def test_specreason_target_writes_only_steps_judged_below_tau(pair):
    draft, target = load(pair, "draft"), CountingTarget(load(pair, "target"))
    policy = make_policy("specreason", 5.0)
    assert isinstance(policy, SpecReason)
    done = []
    probs = [Problem(f"p{i}", "q", f"Question: {i} + {i}?\n\n") for i in range(4)]
    Engine(
        policy,
        Models(draft=draft, target=target, judge=target),
        EngineConfig(max_steps=4, max_step_tokens=8, concurrency=3),
    ).run(probs, done.append)
    assert len(done) == 4
    escalated = kept = 0
    for res in done:
        assert res.counts["judge_calls"] == len(res.steps) == res.counts["draft_calls"]
        assert res.counts["target_calls"] == res.counts["escalated_steps"] == target.generated.get(res.problem.id, 0)
        for rec in res.records:
            judged = rec.scores["judge"]
            assert rec.escalated == (judged < 5.0) == (rec.author == "target")
            escalated += rec.escalated
            kept += not rec.escalated
    assert escalated > 0 and kept > 0
    assert sum(target.generated.values()) == escalated


def test_specreason_threshold_range_and_server_without_judge():
    with pytest.raises(ConfigError):
        make_policy("specreason", 9.5)
    assert make_policy("specreason").threshold == 7.0

    class NoJudge:
        name, separator = "t", SEP

        def generate(self, reqs):
            raise AssertionError

        def release(self, key):
            pass

    class OneDraft(NoJudge):
        def generate(self, reqs):
            from arbitrage.types import Generation

            return [Generation("x", "separator", [1]) for _ in reqs]

    with pytest.raises(ConfigError, match="needs judge"):  # the engine sniffs no capability: the slot is empty
        Engine(make_policy("specreason"), Models(draft=OneDraft(), target=NoJudge()))
    from arbitrage.factory import ModelOptions, build_models
    from arbitrage.registry import registry

    registry().add_loader("generator", "test: no judge", lambda s: s == "no-judge", lambda *a: NoJudge(), 99)
    try:  # a target that cannot judge is refused when the models are built, naming it
        with pytest.raises(ConfigError, match="cannot act as judge"):
            build_models(make_policy("specreason").needs, {"draft": "no-judge", "target": "no-judge"}, ModelOptions())
    finally:
        registry().loaders["generator"] = [lo for lo in registry().loaders["generator"] if lo.name != "test: no judge"]


# --- server judge ----------------------------------------------------------------------------------------


def _server(handler, **kw):
    return OpenAICompletionsGenerator(
        "http://127.0.0.1:9", "m", check=False, backoff=0.0, transport=httpx.MockTransport(handler), **kw
    )


@pytest.mark.parametrize(
    "api,answer",
    [
        (
            "completions",
            {
                "choices": [
                    {
                        "text": "8",
                        "finish_reason": "length",
                        "logprobs": {
                            "tokens": ["8"],
                            "token_logprobs": [-0.7],
                            "top_logprobs": [
                                {"8": math.log(0.5), "6": math.log(0.25), " 6": math.log(0.25), "x": -3.0}
                            ],
                        },
                    }
                ]
            },
        ),
        (
            "completions",
            {
                "choices": [
                    {
                        "text": "8",
                        "finish_reason": "length",
                        "logprobs": {
                            "content": [
                                {
                                    "token": "8",
                                    "logprob": -0.7,
                                    "top_logprobs": [
                                        {"token": "8", "logprob": math.log(0.5)},
                                        {"token": "6", "logprob": math.log(0.5)},
                                    ],
                                }
                            ]
                        },
                    }
                ]
            },
        ),
        (
            "llamacpp",
            {
                "content": "8",
                "stop_type": "limit",
                "completion_probabilities": [
                    {
                        "top_logprobs": [
                            {"token": "8", "logprob": math.log(0.5)},
                            {"token": "6", "logprob": math.log(0.5)},
                        ]
                    }
                ],
            },
        ),
        (
            "llamacpp",
            {
                "content": "8",
                "stop_type": "limit",
                "completion_probabilities": [{"probs": [{"tok_str": "8", "prob": 0.5}, {"tok_str": "6", "prob": 0.5}]}],
            },
        ),
    ],
)
def test_server_judge_reads_top_logprobs(api, answer):
    seen = []

    def handler(request):
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, json=answer)

    g = _server(handler, name="target", api=api, tokenizer=None)
    prev, d = Step("target", "a = 1", "separator", 3), Step("draft", "b = 2", "separator", 3)
    (score,) = g.judge([JudgeRequest("p", "Q: 1+1?\n", [prev], d, "Score: ")])
    assert score == pytest.approx(7.0)
    path, body = seen[0]
    assert body["prompt"] == "Q: 1+1?\na = 1\n\nb = 2\n\nScore: " and body["temperature"] == 0.0
    if api == "completions":
        assert path == "/v1/completions" and body["max_tokens"] == 1 and body["logprobs"] == 20
    else:
        assert path == "/completion" and body["n_predict"] == 1 and body["n_probs"] == 20
