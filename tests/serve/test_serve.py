"""`arbitrage serve` with a real client (the `openai` package) against the server on 127.0.0.1, the testbed
models in-process: completions, chat, streaming step by step, usage equal to the engine's counts, per-request
policy and threshold, every 4xx, a disconnect freeing its place, /health, /metrics, and a bounded load test."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from arbitrage.engine import Engine, EngineConfig, Models
from arbitrage.factory import ModelOptions, build_models
from arbitrage.policies import make_policy
from arbitrage.server.app import create_app
from arbitrage.server.running import serving
from arbitrage.server.service import Service
from arbitrage.testbed.task import make_problems
from arbitrage.types import Problem

openai = pytest.importorskip("openai")

CONFIG = EngineConfig(max_steps=8, max_step_tokens=48, max_total_tokens=320, concurrency=64)
SPECS = {"draft": "testbed:draft", "target": "testbed:target", "prm": "testbed-checker:0.2:0.3"}
PROMPTS = [p.prompt for p in make_problems("test", 12, seed=5)]


@pytest.fixture(scope="module")
def models():
    return build_models({"draft", "target", "prm"}, SPECS, ModelOptions(device="cpu", dtype="float32"))


def make_service(models, policy="rsd", threshold=0.5, **kw) -> Service:
    return Service(
        models, make_policy(policy, threshold), CONFIG, served_name="arbitrage", tokenizer=models.draft.tokenizer, **kw
    )


@pytest.fixture(scope="module")
def server(models):
    with serving(create_app(make_service(models))) as s:
        yield s


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def engine_result(models, prompt, policy="rsd", threshold=0.5):
    done = []
    Engine(
        make_policy(policy, threshold), Models(**{r: getattr(models, r) for r in ("draft", "target", "prm")}), CONFIG
    ).run([Problem("alone", prompt, prompt)], done.append)
    return done[0]


def test_completion_text_and_usage_equal_the_engine(client, models):
    out = client.completions.create(model="arbitrage", prompt=PROMPTS[0], max_tokens=300)
    ref = engine_result(models, PROMPTS[0])
    assert out.choices[0].text == ref.solution and "\\boxed{" in ref.solution
    assert out.choices[0].finish_reason == "stop"
    u = out.usage.model_dump()
    assert u["completion_tokens"] == sum(s.n_tokens for s in ref.steps)
    assert u["steps"] == len(ref.steps) and u["escalated_steps"] == ref.counts["escalated_steps"]
    assert u["target_tokens"] == ref.counts["target_tokens"]
    assert u["discarded_draft_tokens"] == ref.counts["draft_tokens_discarded"]
    assert u["draft_tokens"] == ref.counts["draft_tokens_accepted"] + ref.counts["draft_tokens_discarded"]
    assert u["prompt_tokens"] == len(models.draft.tokenizer(PROMPTS[0])["input_ids"]) > 0
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_chat_renders_the_draft_tokenizers_template(client, models):
    question = PROMPTS[1].rstrip("\n")
    out = client.chat.completions.create(model="arbitrage", messages=[{"role": "user", "content": question}])
    assert out.choices[0].message.content == engine_result(models, PROMPTS[1]).solution
    assert out.choices[0].message.role == "assistant" and out.object == "chat.completion"


def test_streaming_sends_one_chunk_per_step_and_joins_to_the_text(client, models):
    ref = engine_result(models, PROMPTS[2])
    stream = client.completions.create(
        model="arbitrage", prompt=PROMPTS[2], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].finish_reason is None]
    assert texts == [s.context_text("\n\n") for s in ref.steps]  # one chunk per accepted step, in order
    assert "".join(texts) == ref.solution
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.steps == len(ref.steps)
    chat = client.chat.completions.create(
        model="arbitrage", stream=True, messages=[{"role": "user", "content": PROMPTS[2].rstrip()}]
    )
    deltas = [c.choices[0].delta.content for c in chat if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == ref.solution


def test_per_request_policy_and_threshold_change_the_escalations(client):
    def escalated(**extra):
        return sum(
            client.completions.create(model="arbitrage", prompt=p, extra_body=extra).usage.escalated_steps
            for p in PROMPTS[:6]
        )

    never, always = escalated(threshold=0.0), escalated(threshold=1.0)  # PRM scores lie in [0, 1]
    assert never == 0 < always
    target = client.completions.create(model="arbitrage", prompt=PROMPTS[0], extra_body={"policy": "target"})
    assert target.usage.draft_tokens == 0 and target.usage.escalated_steps == target.usage.steps
    short = client.completions.create(model="arbitrage", prompt=PROMPTS[0], extra_body={"max_steps": 1})
    assert short.usage.steps == 1 and short.choices[0].finish_reason == "length"


def test_stop_strings_and_max_tokens(client):
    full = client.completions.create(model="arbitrage", prompt=PROMPTS[3]).choices[0].text
    cut = full.split("\n\n")[1][:3]
    out = client.completions.create(model="arbitrage", prompt=PROMPTS[3], stop=[cut])
    assert out.choices[0].text == full[: full.index(cut)] and out.choices[0].finish_reason == "stop"
    out = client.completions.create(model="arbitrage", prompt=PROMPTS[3], max_tokens=5)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens <= 5 + 48


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"model": "arbitrage", "prompt": "x", "policy": "nope"}, 400, "policy"),
        ({"model": "arbitrage", "prompt": "x", "threshold": 3.0}, 400, "threshold"),
        ({"model": "arbitrage", "prompt": "x", "policy": "router"}, 400, "policy"),  # no router loaded
        ({"model": "arbitrage", "prompt": "x", "policy": "draft", "threshold": 0.5}, 400, "threshold"),
        ({"model": "arbitrage", "prompt": "x", "policy": "draft", "decide_after": 2}, 400, "decide_after"),
        ({"model": "arbitrage"}, 400, "prompt"),
        ({"prompt": "x"}, 400, "model"),
        ({"model": "gpt-4", "prompt": "x"}, 404, "model"),
        ({"model": "arbitrage", "prompt": "x", "n": 2}, 400, "n"),
        ({"model": "arbitrage", "prompt": "x", "temperature": -1}, 400, "temperature"),
        ({"model": "arbitrage", "prompt": "x", "top_p": 0}, 400, "top_p"),
        ({"model": "arbitrage", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "arbitrage", "prompt": "x", "stop": [3]}, 400, "stop"),
        ({"model": "arbitrage", "prompt": "x", "stream": "yes"}, 400, "stream"),
        ({"model": "arbitrage", "prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_field(server, body, status, param):
    r = httpx.post(server.url + "/v1/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]


def test_bad_json_and_bad_chat_messages(server):
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "arbitrage", "messages": [{"role": "user"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["arbitrage"]
    h = httpx.get(server.url + "/health")
    assert h.status_code == 200 and h.json()["backends"]["draft"] == "in-process"
    client.completions.create(model="arbitrage", prompt=PROMPTS[4], extra_body={"threshold": 1.0})
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "arbitrage_requests_total",
        "arbitrage_steps_total",
        "arbitrage_escalations_total",
        "arbitrage_tokens_total",
        "arbitrage_discarded_draft_tokens_total",
        "arbitrage_model_call_seconds_bucket",
        "arbitrage_requests_in_flight",
    ):
        assert name in text, name
    assert 'arbitrage_model_call_seconds_count{role="draft"}' in text
    assert 'arbitrage_tokens_total{model="target"}' in text


class EndlessDraft:
    """Writes "x = 1" steps forever, 0.2 s per call: a problem that never ends on its own (50 steps would take
    10 s), so only a cancellation can free its place in time."""

    name, separator, lane = "draft", "\n\n", ("slow",)

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.released: list[str] = []

    def generate(self, requests):
        from arbitrage.types import Generation

        time.sleep(0.2)
        return [Generation(text="x = 1", stop="separator", token_ids=[1, 2, 3]) for _ in requests]

    def release(self, key):
        self.released.append(key)


def test_a_client_that_disconnects_mid_stream_frees_its_place(models):
    slow = Models(draft=EndlessDraft(models.draft.tokenizer))
    service = make_service(slow, policy="draft", threshold=None)
    with serving(create_app(service)) as s:
        with httpx.stream(
            "POST",
            s.url + "/v1/completions",
            timeout=30,
            json={"model": "arbitrage", "prompt": PROMPTS[5], "stream": True, "max_steps": 50},
        ) as r:
            first = next(r.iter_lines())
            assert first.startswith("data: ")
            assert service.engine.in_flight == 1
        left = time.time()
        while service.engine.in_flight and time.time() < left + 10:
            time.sleep(0.05)
        assert service.engine.in_flight == 0 and time.time() - left < 2  # cancelled, not run to its end
        key = json.loads(first[6:])["id"].replace("cmpl-", "")
        assert slow.draft.released == [key]  # its model state was freed


def test_health_is_503_while_a_served_backend_is_down(models):
    from arbitrage.testing.fake_server import make_app

    fake = serving(make_app("draft-server"))
    backend = fake.__enter__()
    served = build_models({"draft"}, {"draft": backend.url + "/v1"}, ModelOptions())
    service = make_service(Models(draft=served.draft), policy="draft", threshold=None)
    with serving(create_app(service)) as s:
        assert httpx.get(s.url + "/health").status_code == 200
        fake.__exit__(None, None, None)
        r = httpx.get(s.url + "/health")
        assert r.status_code == 503 and r.json()["backends"]["draft"] == "down"


def test_load_64_concurrent_streams_each_equal_to_its_prompt_alone(server, client):
    prompts = [p.prompt for p in make_problems("test", 64, seed=11)]

    async def go():
        aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)

        async def one(p):
            parts = []
            async for c in await aclient.completions.create(model="arbitrage", prompt=p, stream=True):
                if c.choices:
                    parts.append(c.choices[0].text)
            return "".join(parts)

        try:
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            await aclient.close()

    t0 = time.time()
    outs = asyncio.run(go())
    assert time.time() - t0 < 300
    alone = {p: client.completions.create(model="arbitrage", prompt=p).choices[0].text for p in prompts[:16]}
    for p, text in zip(prompts, outs):
        assert text and "\\boxed{" in text
        if p in alone:
            assert text == alone[p]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'status="500"' not in metrics and 'status="503"' not in metrics


def test_usage_and_metrics_say_how_escalations_reused_the_draft(client, server):
    out = client.completions.create(model="arbitrage", prompt=PROMPTS[6], extra_body={"threshold": 1.0})
    spec = out.usage.model_dump()["speculation"]  # every step escalated: each verified the draft's proposal
    assert spec["proposed"] > 0 and 0 < spec["kept"] <= spec["proposed"] and spec["target_forwards"] >= out.usage.steps
    assert spec["kept"] + spec["draft_accepted"] + spec["target_written"] == out.usage.target_tokens
    text = httpx.get(server.url + "/metrics").text
    assert 'arbitrage_speculation_tokens_total{kind="kept"}' in text and "arbitrage_target_forwards_total" in text
