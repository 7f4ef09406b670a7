"""Per-token entropy estimates from a server's top-k log-probs (extras["entropies"]), which probe routers read
from a served draft: llama-server's /completion layout, the legacy /v1/completions layout, and none when the
server returned fewer than two alternatives per token."""

import json
import math

import httpx
import pytest

from arbitrage.backends.openai_compat import OpenAICompletionsGenerator, _entropies
from arbitrage.types import GenerationRequest

URL = "http://127.0.0.1:9"


def H(ps):
    rest = 1 - sum(ps)
    return -sum(p * math.log(p) for p in ps) - (rest * math.log(rest) if rest > 0 else 0.0)


def llamacpp_body():  # as llama-server answers POST /completion with n_probs=3 (trimmed)
    def entry(tok, id_, tops):
        return {
            "id": id_,
            "token": tok,
            "logprob": math.log(tops[0][1]),
            "top_logprobs": [{"id": i, "token": t, "logprob": math.log(p)} for i, (t, p) in enumerate(tops)],
        }

    return {
        "content": "x = 2",
        "tokens": [87, 284, 220],
        "stop": True,
        "stop_type": "word",
        "stopping_word": "\n\n",
        "completion_probabilities": [
            entry("x", 87, [("x", 0.9), ("y", 0.05), ("z", 0.01)]),
            entry(" =", 284, [(" =", 0.5), (" is", 0.5), ("=", 1e-30)]),
            entry(" 2", 220, [(" 2", 0.4), (" 3", 0.3), (" 4", 0.1)]),
        ],
    }


def test_entropies_from_llamacpp_top_logprobs_and_request():
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=llamacpp_body())

    g = OpenAICompletionsGenerator(
        URL, "m", check=False, api="llamacpp", top_logprobs=3, backoff=0.0, transport=httpx.MockTransport(handler)
    )
    (gen,) = g.generate([GenerationRequest("p", "Q\n", [], 8, 0)])
    assert bodies[0]["n_probs"] == 3
    assert (gen.text, gen.stop) == ("x = 2", "separator")
    assert gen.extras["entropies"] == pytest.approx([H([0.9, 0.05, 0.01]), H([0.5, 0.5]), H([0.4, 0.3, 0.1])])
    assert all(e >= 0 for e in gen.extras["entropies"])


def test_entropies_legacy_layout_and_absent():
    legacy = {
        "text": "a",
        "finish_reason": "stop",
        "logprobs": {
            "tokens": ["a", "b"],
            "token_logprobs": [-0.1, -0.2],
            "top_logprobs": [{"a": math.log(0.7), "c": math.log(0.2)}, {"b": math.log(0.6), "d": math.log(0.4)}],
        },
    }
    assert _entropies(legacy) == pytest.approx([H([0.7, 0.2]), H([0.6, 0.4])])
    one = {"completion_probabilities": [{"logprob": -0.1, "top_logprobs": [{"token": "a", "logprob": -0.1}]}]}
    assert _entropies(one) is None  # k = 1 says nothing about the spread
    assert _entropies({"text": "a", "logprobs": None}) is None
