"""PRM and router over HTTP without a server: the /pooling and /v1/embeddings answers as vLLM and the
Arbitrage authors' embedding plugins return them, the token ids sent, and where the score is read."""

import json
import math

import httpx
import pytest
from vllm_server import build_tokenizer

from arbitrage.backends.pooling import PoolingPRM, PoolingRouter, PRMFormat, per_token_outputs, to_probability
from arbitrage.errors import BackendError
from arbitrage.formats import RouterFormat
from arbitrage.protocols import Router, StepScorer
from arbitrage.types import RouteRequest, ScoreRequest, Step

URL = "http://127.0.0.1:9"
TOK = build_tokenizer()


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_per_token_outputs_shapes():
    # vLLM /pooling, token_classify: one softmaxed [p0, p1] per token
    item = {"index": 0, "object": "pooling", "data": [[0.3, 0.7], [0.9, 0.1]]}
    assert per_token_outputs(item, 2) == [[0.3, 0.7], [0.9, 0.1]]
    # one label: numbers rather than lists
    assert per_token_outputs({"data": [0.2, 0.4, 0.6]}, 3) == [[0.2], [0.4], [0.6]]
    # embeddings plugin (Skywork value head): one raw value per token, flattened
    assert per_token_outputs({"object": "embedding", "embedding": [1.0, -2.0, 3.0]}, 3) == [[1.0], [-2.0], [3.0]]
    # embeddings plugin (2-label router): two logits per token, flattened
    flat = {"embedding": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]}
    assert per_token_outputs(flat, 3) == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert per_token_outputs(flat, 3, num_labels=2)[-1] == [4.0, 5.0]
    # a server that pooled the last token only
    assert per_token_outputs({"embedding": [0.5, 1.5]}, 7, num_labels=2) == [[0.5, 1.5]]
    with pytest.raises(ValueError):
        per_token_outputs({"embedding": [1.0, 2.0, 3.0]}, 2)
    with pytest.raises(ValueError):
        per_token_outputs({"data": []}, 2)


def test_to_probability():
    assert to_probability([0.3, 0.7]) == 0.7  # already probabilities (/pooling)
    assert to_probability([0.0, math.log(3)]) == pytest.approx(0.75)  # logits: softmax
    assert to_probability([0.2, 0.3], raw=True) == pytest.approx(1 / (1 + math.exp(-0.1)))  # embeddings: logits
    assert to_probability([0.8]) == 0.8  # one activated value
    assert to_probability([2.0]) == pytest.approx(sigmoid(2.0))  # one raw value
    assert to_probability([0.5], raw=True) == pytest.approx(sigmoid(0.5))
    assert to_probability([0.9, 0.1], label=0) == 0.9
    assert to_probability([1.0, 2.0], activation="none") == 2.0
    assert to_probability([1.0, 2.0], activation="sigmoid") == pytest.approx(sigmoid(2.0))
    with pytest.raises(ValueError):
        to_probability([0.1, 0.9], label=2)


def pooling_server(seen, per_token=lambda ids: [[0.25, 0.75]] * len(ids), route="/pooling"):
    def handler(request):
        body = json.loads(request.content)
        seen.append((request.url.path, body))
        assert request.url.path == route
        if route == "/pooling":
            data = [{"index": i, "object": "pooling", "data": per_token(ids)} for i, ids in enumerate(body["input"])]
        else:
            data = [
                {"index": i, "object": "embedding", "embedding": [x for v in per_token(ids) for x in v]}
                for i, ids in enumerate(body["input"])
            ]
        return httpx.Response(200, json={"object": "list", "data": data[::-1], "usage": {}})  # any order

    return httpx.MockTransport(handler)


def steps():
    return [Step("draft", "a = 5", "separator", 5), Step("target", "b = 6", "separator", 5)]


def test_prm_sends_token_ids_and_reads_each_candidate_last_token():
    seen = []
    last = lambda ids: [[0.5, 0.5]] * (len(ids) - 1) + [[1 - len(ids) / 100, len(ids) / 100]]
    prm = PoolingPRM(URL, "prm", tokenizer=TOK, check=False, transport=pooling_server(seen, last))
    assert isinstance(prm, StepScorer)
    c1, c2 = Step("draft", "c = 1", "separator", 5), Step("target", "c = 11", "separator", 6)
    out = prm.score([ScoreRequest("k", "Let a = 5.", steps(), [c1, c2]), ScoreRequest("k2", "Q", [], [c1])])
    path, body = seen[0] if len(seen[0][1]["input"]) == 2 else seen[1]
    assert body["task"] == "token_classify" and body["model"] == "prm"
    enc = lambda s, special=False: TOK(s, add_special_tokens=special)["input_ids"]
    expected = enc("Let a = 5.\n", True)
    for s in ("a = 5", "b = 6", "c = 1"):
        expected += enc(s) + enc("\n")
    assert body["input"][0] == expected
    assert out[0] == [len(body["input"][0]) / 100, len(body["input"][1]) / 100]
    assert len(out[1]) == 1
    assert prm.score([ScoreRequest("k", "Q", [], [])]) == [[]]


def test_prm_separator_format():
    seen = []
    prm = PoolingPRM(URL, tokenizer=TOK, fmt="separator", check=False, transport=pooling_server(seen))
    prm.score([ScoreRequest("k", "Q", [], [Step("draft", "x", "separator", 1)])])
    assert TOK.decode(seen[0][1]["input"][0]) == "Q\n\nx\n\n"
    assert PRMFormat.named("separator", "<s>") == PRMFormat("{question}<s>", "<s>", True)


def test_prm_formats_match_the_in_process_scorer():
    hf = pytest.importorskip("arbitrage.scoring.hf")
    for name in ("skywork", "separator"):
        ours, theirs = PRMFormat.named(name, "\n\n"), hf.PRMFormat.named(name, "\n\n")
        assert (ours.prefix, ours.step_suffix, ours.bos) == (theirs.prefix, theirs.step_suffix, theirs.bos)


def test_value_head_prm_through_the_embeddings_plugin():
    # Skywork-o1-Open-PRM behind the authors' vLLM plugin: one raw value per token, sigmoid at the step end
    seen = []
    prm = PoolingPRM(
        URL,
        tokenizer=TOK,
        route="embeddings",
        check=False,
        transport=pooling_server(seen, lambda ids: [[0.0]] * (len(ids) - 1) + [[1.5]], route="/v1/embeddings"),
    )
    (scores,) = prm.score([ScoreRequest("k", "Q", [], [Step("draft", "x", "separator", 1)])])
    assert scores == [pytest.approx(sigmoid(1.5))]
    assert seen[0][1]["encoding_format"] == "float" and "task" not in seen[0][1]


def test_router_input_and_probability():
    seen = []
    router = PoolingRouter(URL, "router", tokenizer=TOK, check=False, transport=pooling_server(seen))
    assert isinstance(router, Router)
    draft = Step("draft", "c = 7", "separator", 5)
    y = router.predict([RouteRequest("k", "Let a = 5.", steps(), draft)])
    assert y == [0.75]
    ids = seen[0][1]["input"][0]
    assert TOK.decode(ids) == RouterFormat().text("Let a = 5.", steps(), draft)


def test_router_through_the_embeddings_plugin_reads_the_last_two_logits():
    seen = []
    router = PoolingRouter(
        URL,
        tokenizer=TOK,
        route="embeddings",
        num_labels=2,
        check=False,
        transport=pooling_server(
            seen, lambda ids: [[0.0, 0.0]] * (len(ids) - 1) + [[0.0, 2.0]], route="/v1/embeddings"
        ),
    )
    (y,) = router.predict([RouteRequest("k", "Q", [], Step("draft", "x", "separator", 1))])
    assert y == pytest.approx(math.exp(2) / (1 + math.exp(2)))


def test_router_defaults_from_its_training_metadata(tmp_path):
    TOK.save_pretrained(tmp_path)
    (tmp_path / "arbitrage_router.json").write_text(json.dumps({"separator": "\n", "author_tags": False}))
    router = PoolingRouter(URL, tokenizer=str(tmp_path), check=False, transport=pooling_server([]))
    assert (router.separator, router.author_tags) == ("\n", False)


def test_bad_answers_name_the_url():
    t = httpx.MockTransport(lambda r: httpx.Response(200, json={"object": "list", "data": []}))
    router = PoolingRouter(URL, tokenizer=TOK, check=False, transport=t)
    with pytest.raises(BackendError, match=f"{URL}/pooling answered unexpectedly: 0 outputs for 1 inputs"):
        router.predict([RouteRequest("k", "Q", [], Step("draft", "x", "separator", 1))])
    t = httpx.MockTransport(lambda r: httpx.Response(400, json={"error": {"message": "Unsupported task"}}))
    prm = PoolingPRM(URL, tokenizer=TOK, check=False, transport=t, backoff=0.0)
    with pytest.raises(BackendError, match="refused the request: HTTP 400: Unsupported task"):
        prm.score([ScoreRequest("k", "Q", [], [Step("draft", "x", "separator", 1)])])


def test_discovers_model_and_tokenizer_from_the_server(tmp_path):
    TOK.save_pretrained(tmp_path)
    listing = {"object": "list", "data": [{"id": "tiny-prm", "object": "model", "root": str(tmp_path)}]}
    t = httpx.MockTransport(lambda r: httpx.Response(200, json=listing))
    prm = PoolingPRM(URL, transport=t)
    assert prm.client.model == "tiny-prm" and prm.client.tokenizer_path == str(tmp_path)
