"""The judge PRM without a server: the prompt it sends, P(yes)/(P(yes)+P(no)) from each server's top-logprob
layout, candidates in order, and clear errors (httpx.MockTransport answers)."""

import json
import math

import httpx
import pytest

from arbitrage.backends.judge_prm import JudgePRM, judge_score, top_logprobs, verdict_of
from arbitrage.errors import BackendError, ConfigError
from arbitrage.protocols import StepScorer
from arbitrage.types import ScoreRequest, Step

URL = "http://127.0.0.1:9"  # never contacted


def legacy(tops):  # vLLM / llama-cpp-python /v1/completions
    return {
        "choices": [
            {
                "text": "Yes",
                "finish_reason": "length",
                "logprobs": {"tokens": ["Yes"], "token_logprobs": [-0.1], "top_logprobs": [tops]},
            }
        ]
    }


def chat_layout(tops):  # llama-server /v1/completions
    return {
        "choices": [
            {
                "text": "Yes",
                "finish_reason": "length",
                "logprobs": {
                    "content": [
                        {
                            "token": "Yes",
                            "logprob": -0.1,
                            "top_logprobs": [{"token": t, "logprob": v} for t, v in tops.items()],
                        }
                    ]
                },
            }
        ]
    }


def native(tops):  # llama-server /completion with n_probs
    return {
        "content": "Yes",
        "stop_type": "limit",
        "completion_probabilities": [
            {
                "id": 1,
                "token": "Yes",
                "logprob": -0.1,
                "top_logprobs": [{"id": 2, "token": t, "logprob": v} for t, v in tops.items()],
            }
        ],
    }


def judge(handler, **kw):
    kw.setdefault("backoff", 0.0)
    return JudgePRM(URL, "m", check=False, transport=httpx.MockTransport(handler), **kw)


def test_verdict_spellings():
    assert [verdict_of(t) for t in ("Yes", " yes", "YES.", "No", " no", "**No", "Maybe", " ")] == [
        "yes",
        "yes",
        "yes",
        "no",
        "no",
        "no",
        None,
        None,
    ]


def test_score_is_yes_over_yes_plus_no_summed_over_spellings():
    tops = [("Yes", math.log(0.5)), (" yes", math.log(0.1)), ("No", math.log(0.3)), ("The", math.log(0.05))]
    assert judge_score(tops) == pytest.approx(0.6 / 0.9)
    # one verdict missing: it gets the smallest listed probability, so the score stays below 1
    assert judge_score([("Yes", math.log(0.9)), ("The", math.log(0.01))]) == pytest.approx(0.9 / 0.91)
    assert judge_score([("The", -0.1), ("A", -3.0)]) is None


@pytest.mark.parametrize("layout", [legacy, chat_layout])
def test_completions_api_request_and_layouts(layout):
    seen = []

    def handler(request):
        body = json.loads(request.content)
        seen.append((request.url.path, body))
        # the answer depends on the candidate, so the order of the results is checked too
        p_yes = 0.8 if "x = 2" in body["prompt"] else 0.25
        return httpx.Response(200, json=layout({"Yes": math.log(p_yes), "No": math.log(1 - p_yes)}))

    prm = judge(handler)
    assert isinstance(prm, StepScorer)
    prev = [Step("draft", "Let x be the answer.", "separator", 5), Step("target", "Then x + 1 = 3.", "separator", 6)]
    good, bad = Step("draft", "So x = 2.", "eos", 4), Step("target", "So x = 5.", "eos", 4)
    out = prm.score(
        [ScoreRequest("p1", "What is x if x + 1 = 3?", prev, [good, bad]), ScoreRequest("p2", "Q2", [], [bad])]
    )
    assert out[0] == [pytest.approx(0.8), pytest.approx(0.25)] and out[1] == [pytest.approx(0.25)]
    path, body = seen[0]
    assert path == "/v1/completions"
    assert body["max_tokens"] == 1 and body["logprobs"] == 20 and body["temperature"] == 0.0 and body["model"] == "m"
    prompts = sorted(b["prompt"] for _, b in seen)
    first = next(p for p in prompts if "x = 2" in p)
    assert "What is x if x + 1 = 3?" in first
    # the solution as it grows, the candidate last, each step followed by the separator
    assert "Solution:\nLet x be the answer.\n\nThen x + 1 = 3.\n\nSo x = 2.\n\nIs the last step" in first
    assert first.endswith("<|im_start|>assistant\n")
    assert any("Solution:\nSo x = 5.\n\nIs the last step" in p for p in prompts)  # first step: no earlier ones
    prm.release("p1")
    assert prm.n_calls == 3 and prm.n_undecided == 0


def test_judging_prompts_grow_by_prefix():
    """Step k+1's prompt starts with step k's prompt up to the end of the kept step, so a prefix-caching server
    computes only the new candidate and the question."""
    prm = judge(lambda r: httpx.Response(200, json=legacy({"Yes": -0.1, "No": -2.0})))
    steps = [Step("draft", f"Step {i}: compute {i} + {i}.", "separator", 6) for i in range(4)]
    for k in range(1, 4):
        before = prm.prompt("Q", steps[: k - 1], steps[k - 1])
        after = prm.prompt("Q", steps[:k], steps[k])
        shared = before[: before.index(steps[k - 1].text) + len(steps[k - 1].text) + 2]
        assert after.startswith(shared), (before, after)
    custom = judge(lambda r: None, template="{question}|{steps}|{step}")
    assert custom.prompt("Q", steps[:2], steps[2]) == f"Q|{steps[0].text}\n\n{steps[1].text}|{steps[2].text}"
    assert custom.prompt("Q", [], steps[0]) == f"Q|(nothing yet)|{steps[0].text}"
    with pytest.raises(ConfigError, match="prefix"):
        judge(lambda r: None, template="{question} {step}")


def test_llamacpp_native_api():
    seen = []

    def handler(request):
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, json=native({" yes": math.log(0.3), " no": math.log(0.6)}))

    prm = judge(handler, api="llamacpp", top_k=5)
    assert prm.score([ScoreRequest("p", "Q", [], [Step("draft", "a", "separator", 1)])]) == [[pytest.approx(1 / 3)]]
    path, body = seen[0]
    assert path == "/completion" and body["n_predict"] == 1 and body["n_probs"] == 5 and body["cache_prompt"]


def test_older_llamacpp_probs_layout():
    resp = {
        "content": "Yes",
        "completion_probabilities": [
            {"content": "Yes", "probs": [{"tok_str": "Yes", "prob": 0.6}, {"tok_str": "No", "prob": 0.2}]}
        ],
    }
    assert judge_score(top_logprobs(resp)) == pytest.approx(0.75)


def test_undecided_scores_half_and_bad_answers_raise():
    prm = judge(lambda r: httpx.Response(200, json=legacy({"The": -0.1, "A": -2.0})))
    assert prm.score([ScoreRequest("p", "Q", [], [Step("draft", "a", "separator", 1)])]) == [[0.5]]
    assert prm.n_undecided == 1
    broken = judge(lambda r: httpx.Response(200, json={"choices": [{"text": "Yes", "logprobs": None}]}))
    with pytest.raises(BackendError, match="judge PRM server at http://127.0.0.1:9/v1/completions"):
        broken.score([ScoreRequest("p", "Q", [], [Step("draft", "a", "separator", 1)])])


def test_config_errors():
    with pytest.raises(ConfigError):
        JudgePRM(URL, check=False, template="no fields")
    with pytest.raises(ConfigError):
        JudgePRM(URL, check=False, api="grpc")
