"""`arbitrage serve` against hostile and unusual input: nothing a request sends takes the server down, every
error is JSON in OpenAI's layout naming the request field, prompts are bounded, a failing backend fails only
its own request, the engine's health shows in /health, `seed` reproduces, usage counts what is returned, chat
follows OpenAI's roles and content parts, and shutdown is bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from arbitrage.engine import EngineConfig, Models
from arbitrage.factory import ModelOptions, build_models
from arbitrage.policies import make_policy
from arbitrage.server.app import create_app
from arbitrage.server.running import serving
from arbitrage.server.service import Service
from arbitrage.testbed.task import make_problems

CONFIG = EngineConfig(max_steps=8, max_step_tokens=48, max_total_tokens=320, concurrency=16)
SPECS = {"draft": "testbed:draft", "target": "testbed:target", "prm": "testbed-checker:0.2:0.3"}
PROMPTS = [p.prompt for p in make_problems("test", 6, seed=21)]


@pytest.fixture(scope="module")
def models():
    return build_models({"draft", "target", "prm"}, SPECS, ModelOptions(device="cpu", dtype="float32"))


def service_of(models, policy="rsd", threshold=0.5, **kw) -> Service:
    return Service(models, make_policy(policy, threshold), CONFIG, tokenizer=models.draft.tokenizer, **kw)


@pytest.fixture(scope="module")
def server(models):
    with serving(create_app(service_of(models))) as s:
        yield s


def post(server, body, path="/v1/completions", **kw):
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def assert_error(r, status: int, param):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and "--" not in err["message"], err
    return err["message"]


def still_serving(server):
    assert httpx.get(server.url + "/health").status_code == 200
    ok = post(server, {"model": "arbitrage", "prompt": PROMPTS[0]})
    assert ok.status_code == 200 and "\\boxed{" in ok.json()["choices"][0]["text"]


# ---------------------------------------------------------------- text the tokenizer cannot take


@pytest.mark.parametrize(
    "body,path,param",
    [
        ({"prompt": "Let a = 1.\ud800 What is a?"}, "/v1/completions", "prompt"),
        ({"prompt": ["\udfff"]}, "/v1/completions", "prompt"),
        ({"prompt": "Let a = 1. What is a?", "stop": ["x\ud800"]}, "/v1/completions", "stop"),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "/v1/chat/completions", "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a\udc00"}]}]},
            "/v1/chat/completions",
            "messages[0].content[0].text",
        ),
    ],
)
def test_unpaired_surrogates_are_a_400_and_the_server_lives_on(server, body, path, param):
    raw = json.dumps({"model": "arbitrage", **body})  # json.dumps writes the lone surrogate as \ud800: valid JSON
    r = httpx.post(server.url + path, content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert "surrogate" in assert_error(r, 400, param)
    still_serving(server)


# ---------------------------------------------------------------- bounded prompts


def test_prompt_bytes_are_bounded_before_tokenizing(server, models, monkeypatch):
    t0 = time.perf_counter()
    r = post(server, {"model": "arbitrage", "prompt": "Let a = 1. " * 500_000})  # 5.5 MB: over the body limit
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]
    calls = []
    svc = server.server.config.app.state.service
    tokenizer = svc.tokenizer
    monkeypatch.setattr(svc, "tokenizer", lambda *a, **k: calls.append(a) or tokenizer(*a, **k))
    r = post(server, {"model": "arbitrage", "prompt": "Let a = 1. " * 20_000})  # 220 KB: under it, over the prompt's
    assert "bytes" in assert_error(r, 400, "prompt") and not calls  # refused before any tokenizing
    assert time.perf_counter() - t0 < 5
    monkeypatch.undo()
    still_serving(server)


def test_prompt_tokens_and_output_are_bounded_by_the_models_positions(models, server):
    svc = server.server.config.app.state.service
    assert svc.window == 512 and svc.max_prompt_tokens == 511  # the testbed models' positions
    long = "Let a = 12. b = a + 7. " * 60  # about 600 tokens, under the byte bound
    assert "prompt" in assert_error(post(server, {"model": "arbitrage", "prompt": long}), 400, "prompt")
    n = len(models.draft.tokenizer(PROMPTS[1])["input_ids"])
    msg = assert_error(
        post(server, {"model": "arbitrage", "prompt": PROMPTS[1], "max_tokens": 512 - n + 1}), 400, "max_tokens"
    )
    assert f"at most {512 - n}" in msg
    assert post(server, {"model": "arbitrage", "prompt": PROMPTS[1], "max_tokens": 512 - n}).status_code == 200


def test_body_over_the_limit_is_a_413(models):
    svc = service_of(models, max_prompt_tokens=100)
    with serving(create_app(svc)) as s:
        r = httpx.post(
            s.url + "/v1/completions",
            content=b"{" + b" " * (svc.max_body_bytes + 10) + b"}",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413 and r.json()["error"]["message"]


def test_max_prompt_tokens_must_fit_the_models():
    from arbitrage.errors import ConfigError

    with pytest.raises(ConfigError, match="below the models' 512 positions"):
        service_of(
            build_models({"draft"}, {"draft": "testbed:draft"}, ModelOptions()),
            policy="draft",
            threshold=None,
            max_prompt_tokens=600,
        )


# ---------------------------------------------------------------- malformed fields: JSON 400s, never 500s


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"seed": 10**400}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"policy": ["rsd"]}, "policy"),
        ({"policy": {"name": "rsd"}}, "policy"),
        ({"threshold": 10**400}, "threshold"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"logprobs": 1}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"model": ["arbitrage"]}, "model"),
        ({"threshold": 5}, "threshold"),
        ({"policy": "router"}, "policy"),
    ],
)
def test_malformed_fields_are_400s_naming_the_field(server, extra, param):
    body = {"model": "arbitrage", "prompt": "Let a = 3. b = a + 1. What is b?\n\n", **extra}
    assert_error(post(server, body), 400, param)


def test_deeply_nested_body_and_other_routes_are_json(server):
    deep = b"[" * 100_000 + b"]" * 100_000
    r = httpx.post(server.url + "/v1/completions", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nests too deeply" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(server.url + "/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"] == "no route /v2/nothing"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'endpoint="other",status="405"' in metrics
    still_serving(server)


# ---------------------------------------------------------------- a failing backend fails only its request


class Flaky:
    """The testbed draft, except that any batch holding a prompt with "POISON" raises, as a tokenizer or a
    kernel failing on one input would."""

    def __init__(self, gen):
        self.gen, self.name, self.separator, self.tokenizer = gen, gen.name, gen.separator, gen.tokenizer
        self.model, self.lane = gen.model, gen.lane

    def generate(self, requests):
        if any("POISON" in r.prompt for r in requests):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")
        time.sleep(0.05)  # so that concurrent requests share batches
        return self.gen.generate(requests)

    def release(self, key):
        self.gen.release(key)


def test_a_backend_exception_fails_only_its_own_request(models):
    svc = service_of(Models(draft=Flaky(models.draft), target=models.target, prm=models.prm))
    with serving(create_app(svc)) as s:
        results = {}

        def call(name, prompt):
            results[name] = post(s, {"model": "arbitrage", "prompt": prompt})

        threads = [threading.Thread(target=call, args=(f"good{i}", PROMPTS[i])) for i in range(4)]
        threads.append(threading.Thread(target=call, args=("bad", "POISON " + PROMPTS[4])))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results["bad"].status_code == 500 and results["bad"].json()["error"]["type"] == "server_error"
        for i in range(4):
            alone = post(s, {"model": "arbitrage", "prompt": PROMPTS[i]})
            assert results[f"good{i}"].status_code == 200
            assert results[f"good{i}"].json()["choices"][0]["text"] == alone.json()["choices"][0]["text"]
        stream = httpx.post(s.url + "/v1/completions", json={"model": "arbitrage", "prompt": "POISON", "stream": True})
        assert '"server_error"' in stream.text
        assert httpx.get(s.url + "/health").status_code == 200
        metrics = httpx.get(s.url + "/metrics").text
        assert 'endpoint="completions",status="500"} 2.0' in metrics


class Fatal(BaseException):
    """Not an Exception: nothing isolates it, so the engine's thread stops."""


class Dying(Flaky):
    def generate(self, requests):
        raise Fatal("the device is gone")


def test_an_engine_that_stopped_is_a_503_on_health_and_on_requests(models):
    svc = service_of(Models(draft=Dying(models.draft), target=models.target, prm=models.prm))
    with serving(create_app(svc)) as s:
        r = post(s, {"model": "arbitrage", "prompt": PROMPTS[0]})
        assert r.status_code == 500
        deadline = time.time() + 5
        while svc.engine.alive and time.time() < deadline:
            time.sleep(0.05)
        h = httpx.get(s.url + "/health")
        assert h.status_code == 503 and h.json()["backends"]["engine"] == "down"
        r = post(s, {"model": "arbitrage", "prompt": PROMPTS[0]})
        assert r.status_code == 503 and "engine stopped" in r.json()["error"]["message"]


# ---------------------------------------------------------------- seed, usage, chat


def test_seed_reproduces_sampled_text_streamed_or_not(server):
    body = {"model": "arbitrage", "prompt": PROMPTS[2], "temperature": 1.5, "seed": 42, "policy": "draft"}
    texts = {post(server, body).json()["choices"][0]["text"] for _ in range(3)}
    assert len(texts) == 1
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        parts = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert "".join(p["choices"][0]["text"] for p in parts if p["choices"]) == texts.pop()
    others = {post(server, {**body, "seed": s}).json()["choices"][0]["text"] for s in range(6)}
    assert len(others) > 1  # the seed matters


def test_usage_counts_only_the_returned_text(server, models):
    full = post(server, {"model": "arbitrage", "prompt": PROMPTS[3], "policy": "draft"}).json()["choices"][0]["text"]
    second = full.split("\n\n")[1]
    stop = second[:5]
    out = post(server, {"model": "arbitrage", "prompt": PROMPTS[3], "policy": "draft", "stop": [stop]}).json()
    text = out["choices"][0]["text"]
    assert text == full[: full.index(stop)]
    assert out["usage"]["completion_tokens"] == len(models.draft.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert out["usage"]["draft_tokens"] > out["usage"]["completion_tokens"]  # the work done is still counted there


@pytest.mark.parametrize(
    "messages,param",
    [
        ([{"role": "robot", "content": "hi"}], "messages[0].role"),
        ([{"role": "tool", "content": "hi"}], "messages[0].role"),
        ([{"role": "system", "content": "be brief"}], "messages"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content[0]"),
        ([{"role": "user", "content": []}], "messages[0].content"),
        ([{"role": "user", "content": None}], "messages[0].content"),
    ],
)
def test_chat_roles_and_parts_follow_openai(server, messages, param):
    assert_error(post(server, {"model": "arbitrage", "messages": messages}, "/v1/chat/completions"), 400, param)


def test_chat_content_parts_are_joined_like_a_string(server):
    question = PROMPTS[5].rstrip("\n")
    plain = post(
        server, {"model": "arbitrage", "messages": [{"role": "user", "content": question}]}, "/v1/chat/completions"
    )
    parts = post(
        server,
        {
            "model": "arbitrage",
            "messages": [
                {"role": "developer", "content": "answer in steps"},
                {"role": "user", "content": [{"type": "text", "text": question}]},
            ],
        },
        "/v1/chat/completions",
    )
    assert parts.status_code == plain.status_code == 200
    assert parts.json()["choices"][0]["message"]["content"] == plain.json()["choices"][0]["message"]["content"]


# ---------------------------------------------------------------- bounded shutdown


@pytest.mark.slow
def test_sigterm_with_streams_in_flight_exits_within_the_shutdown_timeout(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "arbitrage.cli",
            "serve",
            "--policy",
            "target",
            "--target",
            "testbed:target",
            "--port",
            str(port),
            "--max-concurrency",
            "1",
            "--shutdown-timeout",
            "1",
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail(proc.stdout.read().decode() if proc.poll() is not None else "the server did not start")

        def stream(i):  # 40 problems, one at a time: about 40 x 0.15 s of work queued behind each other
            try:
                httpx.post(
                    url + "/v1/completions",
                    json={"model": "arbitrage", "prompt": PROMPTS[i % 6], "stream": True},
                    timeout=60,
                )
            except httpx.HTTPError:
                pass

        threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(40)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.time() - t0 < 1 + 4  # the timeout, plus the engine's last call and the process's exit
    finally:
        if proc.poll() is None:
            proc.kill()
