"""Server backends without a server: retries and backoff, errors naming the URL, the concurrency cap, the
requests the generator sends and how it reads the answers (httpx.MockTransport and a local flaky server)."""

import asyncio
import contextlib
import http.server
import json
import threading

import httpx
import pytest
from vllm_server import build_tokenizer, free_port

from arbitrage.backends.http_common import HttpClient, server_root
from arbitrage.backends.openai_compat import OpenAICompletionsGenerator
from arbitrage.errors import BackendError
from arbitrage.protocols import StepGenerator
from arbitrage.types import GenerationRequest, Step
from arbitrage.types import request_seed as seed_for

URL = "http://127.0.0.1:9"  # never contacted: MockTransport answers


def completion(text="x", finish="stop", stop_reason="\n\n", ids=(5, 4), lps=(-0.5, -0.25)):
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "text": text,
                "finish_reason": finish,
                "stop_reason": stop_reason,
                "token_ids": list(ids),
                "logprobs": {
                    "tokens": ["x", "\n\n"],
                    "token_logprobs": list(lps),
                    "top_logprobs": None,
                    "text_offset": [0, 1],
                },
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": len(ids), "total_tokens": 3 + len(ids)},
    }


def generator(handler, **kw):
    kw.setdefault("backoff", 0.0)
    return OpenAICompletionsGenerator(URL, "m", check=False, transport=httpx.MockTransport(handler), **kw)


def req(key="p1", steps=(), n=8, index=0, prompt="Q: 1+1?\n"):
    return GenerationRequest(key, prompt, list(steps), n, index)


def test_server_root_forms():
    for u in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/", "h:8000"):
        assert server_root(u) == "http://h:8000"


def test_generator_protocol_and_request_body():
    seen = []

    def handler(request):
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, json=completion())

    g = generator(handler, name="draft")
    assert isinstance(g, StepGenerator)
    prev = Step("target", "a = 1", "separator", 3)
    out = g.generate([req(steps=[prev], n=7, index=1)])
    path, body = seen[0]
    assert path == "/v1/completions"
    assert body["prompt"] == "Q: 1+1?\na = 1\n\n" and body["max_tokens"] == 7 and body["stop"] == ["\n\n"]
    assert body["model"] == "m" and body["logprobs"] == 5 and body["temperature"] == 0.0 and "seed" not in body
    gen = out[0]
    assert (gen.text, gen.stop, gen.token_ids, gen.logprobs, gen.n_prefill) == (
        "x",
        "separator",
        [5, 4],
        [-0.5, -0.25],
        0,
    )
    assert gen.extras["generator"] == "draft"
    g.release("p1")  # a no-op


def test_sampling_seed_is_per_problem_and_step():
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=completion())

    g = generator(handler, temperature=0.7, top_p=0.9, seed=3)
    g.generate([req("a", index=0), req("a", index=1), req("b", index=0)])
    seeds = [b["seed"] for b in sorted(bodies, key=lambda b: b["seed"])]
    assert sorted(seeds) == sorted([seed_for(3, "a", 0), seed_for(3, "a", 1), seed_for(3, "b", 0)])
    assert len(set(seeds)) == 3 and all(0 <= s < 2**31 for s in seeds)
    assert all(b["temperature"] == 0.7 and b["top_p"] == 0.9 for b in bodies)


def test_token_id_prompts_follow_the_in_process_rule():
    tok = build_tokenizer()
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return httpx.Response(
            200,
            json=completion(
                text="ab", ids=[tok.convert_tokens_to_ids(c) for c in "ab"] + [tok.convert_tokens_to_ids("\n\n")]
            ),
        )

    g = generator(handler, name="draft", tokenizer=tok)
    own = Step("draft", "zz", "separator", 2, token_ids=[7, 7, 7], extras={"generator": "draft"})  # ids kept as is
    other = Step("target", "b", "separator", 2, token_ids=[9], extras={"generator": "target"})  # re-tokenized
    g.generate([req(steps=[own, other], prompt="Q")])
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    assert bodies[0]["prompt"] == tok("Q")["input_ids"] + [7, 7, 7] + enc("b\n\n")


def test_eos_drops_the_final_token_and_length_keeps_all():
    answers = iter(
        [
            completion("7", "stop", None, ids=(33, 2), lps=(-1.0, -2.0)),
            completion("abc", "length", None, ids=(1, 2, 3), lps=(-1.0, -1.0, -1.0)),
        ]
    )
    g = generator(lambda r: httpx.Response(200, json=next(answers)))
    eos, length = g.generate([req()]) + g.generate([req()])
    assert (eos.stop, eos.token_ids, len(eos.logprobs)) == ("eos", [33], 2)
    assert (length.stop, length.token_ids) == ("length", [1, 2, 3])


def test_zero_token_budget_sends_nothing():
    g = generator(lambda r: pytest.fail("no request expected"))
    (gen,) = g.generate([req(n=0)])
    assert (gen.text, gen.stop, gen.token_ids) == ("", "length", [])


def test_llamacpp_native_api():
    bodies = []

    def handler(request):
        bodies.append((request.url.path, json.loads(request.content)))
        return httpx.Response(
            200,
            json={
                "content": "7",
                "tokens": [33, 2],
                "stop": True,
                "stop_type": "eos",
                "stopping_word": "",
                "completion_probabilities": [
                    {"id": 33, "token": "7", "logprob": -0.1, "top_logprobs": []},
                    {"id": 2, "token": "", "logprob": -0.2, "top_logprobs": []},
                ],
            },
        )

    g = generator(handler, api="llamacpp")
    (gen,) = g.generate([req(n=5)])
    path, body = bodies[0]
    assert path == "/completion" and body["n_predict"] == 5 and body["stop"] == ["\n\n"] and body["n_probs"] == 5
    assert (gen.text, gen.stop, gen.token_ids, gen.logprobs) == ("7", "eos", [33], [-0.1, -0.2])


def test_retries_5xx_and_timeouts_then_succeeds():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(503, json={"error": {"message": "overloaded"}})
        if len(calls) == 2:
            raise httpx.ReadTimeout("slow", request=request)
        if len(calls) == 3:
            return httpx.Response(500, text="boom")
        return httpx.Response(200, json=completion())

    g = generator(handler, max_retries=3)
    assert g.generate([req()])[0].text == "x"
    assert len(calls) == 4 and g.http.n_retries == 3


def test_backoff_doubles_up_to_a_cap():
    sleeps = []

    async def fake_sleep(s):
        sleeps.append(s)

    client = HttpClient(
        URL,
        backoff=0.5,
        max_backoff=3.0,
        max_retries=5,
        sleep=fake_sleep,
        transport=httpx.MockTransport(lambda r: httpx.Response(502, text="bad gateway")),
    )
    with pytest.raises(BackendError, match="kept failing after 6 attempts"):
        client.post_many("/x", [{}])
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_client_errors_are_not_retried_and_name_the_url():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(400, json={"error": {"message": "This model's maximum context length is 2048"}})

    g = generator(handler, max_retries=5)
    with pytest.raises(BackendError) as err:
        g.generate([req()])
    assert len(calls) == 1
    assert f"{URL}/v1/completions" in str(err.value) and "maximum context length" in str(err.value)


def test_unreachable_server_at_start_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(BackendError, match=f"cannot reach draft server at {url}"):
        OpenAICompletionsGenerator(url, name="draft", backoff=0.01)


def test_server_down_past_the_retry_budget_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    g = OpenAICompletionsGenerator(url, "m", name="target", check=False, max_retries=2, backoff=0.01)
    with pytest.raises(BackendError) as err:
        g.generate([req()])
    msg = str(err.value)
    assert url.replace("/v1", "") + "/v1/completions" in msg and "3 attempts" in msg and "ConnectError" in msg


def test_concurrency_cap_is_respected():
    state = {"now": 0, "peak": 0}

    async def handler(request):
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.02)
        state["now"] -= 1
        return httpx.Response(200, json=completion(text=json.loads(request.content)["prompt"][-1]))

    g = generator(handler, concurrency=3)
    out = g.generate([req(f"p{i}", prompt=f"Q{i % 10}") for i in range(20)])
    assert [o.text for o in out] == [str(i % 10) for i in range(20)]  # answers come back in request order
    assert state["peak"] == 3 and g.http.max_in_flight == 3


def test_model_discovery_and_wrong_model_name():
    def handler(request):
        assert request.url.path == "/v1/models"
        return httpx.Response(200, json={"object": "list", "data": [{"id": "qwen-1.5b", "object": "model"}]})

    g = OpenAICompletionsGenerator(URL, transport=httpx.MockTransport(handler))
    assert g.model == "qwen-1.5b" and g.name == "qwen-1.5b"
    with pytest.raises(BackendError, match="does not serve 'other'.*'qwen-1.5b'"):
        OpenAICompletionsGenerator(URL, "other", transport=httpx.MockTransport(handler))


class _Scripted(http.server.BaseHTTPRequestHandler):
    """A real HTTP server whose n-th POST (from 1) is answered by `answer(n) -> (status, body)`."""

    count = 0

    @classmethod
    def answer(cls, n: int) -> tuple[int, dict]:  # pragma: no cover - overridden
        raise NotImplementedError

    def do_POST(self):
        type(self).count += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        status, payload = self.answer(type(self).count)
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(handler):
    """http://127.0.0.1:PORT/v1 of a threaded server running `handler`, shut down afterwards."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/v1"
    finally:
        srv.shutdown()


class _Flaky(_Scripted):
    """Answers 500 to the first `fail` POSTs, then a completion."""

    fail = 2

    @classmethod
    def answer(cls, n):
        return (200, completion()) if n > cls.fail else (500, {"error": {"message": "engine restarting"}})


def test_real_flaky_http_server():
    with serving(_Flaky) as url:
        g = OpenAICompletionsGenerator(url, "m", check=False, backoff=0.01)
        assert g.generate([req()])[0].stop == "separator"
        assert _Flaky.count == 3 and g.http.n_retries == 2
        g.close()


class _DiesAfter(_Scripted):
    """Answers `ok` completions (each ends its problem at eos), then 503 for ever: a server that went down."""

    ok = 3

    @classmethod
    def answer(cls, n):
        return (200, completion("The answer is 7.", "stop", None)) if n <= cls.ok else (503, {"error": "down"})


def test_engine_keeps_finished_problems_when_the_server_stays_down():
    from arbitrage.engine import Engine, EngineConfig, Models
    from arbitrage.policies import make_policy
    from arbitrage.types import Problem

    with serving(_DiesAfter) as url:
        draft = OpenAICompletionsGenerator(url, "m", name="draft", check=False, max_retries=2, backoff=0.01)
        done = []
        engine = Engine(make_policy("draft"), Models(draft=draft), EngineConfig(concurrency=1))
        with pytest.raises(BackendError, match=f"{url}/completions kept failing"):
            engine.run([Problem(f"q{i}", "Q", "Q\n") for i in range(6)], done.append)
        assert [r.problem.id for r in done] == ["q0", "q1", "q2"]
        assert all(r.finish == "eos" and r.solution == "The answer is 7." for r in done)
