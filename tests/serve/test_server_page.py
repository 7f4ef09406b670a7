"""Seeing where the target was called while serving: the `arbitrage` field of the server's streamed chunks (read
through the official openai client), the policies in /v1/models, and the server page streaming a question step by
step in a real headless Chromium (driven over the DevTools protocol)."""

from __future__ import annotations

import re
import urllib.parse

import httpx
import pytest
from browser import shown_number

from arbitrage.engine import Engine, EngineConfig, Models
from arbitrage.factory import ModelOptions, build_models
from arbitrage.policies import make_policy
from arbitrage.registry import registry
from arbitrage.server.app import create_app
from arbitrage.server.running import serving
from arbitrage.server.service import Service
from arbitrage.types import Problem

CONFIG = EngineConfig(max_steps=8, max_step_tokens=48, max_total_tokens=320, concurrency=8)
SPECS = {"draft": "testbed:draft", "target": "testbed:target", "prm": "testbed-checker:0.1:0.1"}
# Greedy testbed models: rsd at tau = 1 escalates the first two steps of this question and keeps the last (at rsd's
# default 0.7 only the second is escalated, and the server's default policy, the draft, escalates none).
QUESTION, TAU = "Let a = 23. b = a + 19. c = b mod 7. What is c?", 1.0


@pytest.fixture(scope="module")
def models():
    return build_models({"draft", "target", "prm"}, SPECS, ModelOptions(device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def server(models):
    service = Service(models, make_policy("draft"), CONFIG, served_name="arbitrage", tokenizer=models.draft.tokenizer)
    with serving(create_app(service)) as s:
        yield s


def reference(models, question: str, threshold: float):
    done = []
    Engine(make_policy("rsd", threshold), Models(draft=models.draft, target=models.target, prm=models.prm), CONFIG).run(
        [Problem("ref", question + "\n\n", question + "\n\n")], done.append
    )
    return done[0]


def test_each_streamed_step_says_who_wrote_it_through_the_openai_client(server, models):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    ref = reference(models, QUESTION, TAU)
    assert any(r.escalated for r in ref.records) and not all(r.escalated for r in ref.records)
    chunks = list(
        client.completions.create(
            model="arbitrage",
            prompt=QUESTION + "\n\n",
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"policy": "rsd", "threshold": TAU},
        )
    )
    steps = [c for c in chunks if c.choices and c.choices[0].finish_reason is None]
    assert len(steps) == len(ref.records)
    for c, r in zip(steps, ref.records):
        extra = c.model_extra["arbitrage"]
        assert c.choices[0].text.rstrip("\n") == r.text
        assert (extra["author"], extra["escalated"], extra["index"]) == (r.author, r.escalated, r.index)
        assert extra["scores"] == pytest.approx(r.scores) and extra["scores"]
        assert extra["n_tokens"] == r.n_tokens and set(extra["seconds"]) == set(r.seconds)
        assert extra["draft"] == (
            {"text": r.draft.text, "stop": r.draft.stop, "n_tokens": r.draft.n_tokens} if r.author == "target" else None
        )
        assert extra["speculation"] == r.speculation
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert final[0].model_extra["arbitrage"]["finish"] == "eos"
    assert final[0].model_extra["arbitrage"]["latency_s"] > 0
    assert chunks[-1].usage.escalated_steps == sum(r.escalated for r in ref.records)
    chat = list(
        client.chat.completions.create(
            model="arbitrage",
            stream=True,
            extra_body={"policy": "rsd", "threshold": TAU},
            messages=[{"role": "user", "content": QUESTION}],
        )
    )
    assert [c.model_extra["arbitrage"]["author"] for c in chat if c.choices and c.choices[0].finish_reason is None] == [
        r.author for r in ref.records
    ]


def test_models_lists_the_policies_this_server_can_run_and_the_page_is_served(server):
    entry = httpx.get(server.url + "/v1/models").json()["data"][0]
    names = [p["name"] for p in entry["policies"]]
    loaded = {"draft", "target", "prm"}
    assert names == [n for n, c in registry().policies.items() if c.needs <= loaded]
    assert "rsd" in names and "router" not in names and "specreason" not in names
    for p in entry["policies"]:
        cls = registry().policies[p["name"]]
        assert p["threshold_range"] == (list(cls.threshold_range) if cls.threshold_range else None)
        assert p["default_threshold"] == cls.default_threshold
    assert entry["default_policy"] == {"name": "draft", "threshold": None}
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in re.findall(r'(?:src|href)="(static/[^"]+)"', page.text):
        assert httpx.get(f"{server.url}/{asset}").status_code == 200, asset
    assert {"static/app.js", "static/steps.js", "static/style.css"} <= set(re.findall(r'"(static/[^"]+)"', page.text))
    assert "http" not in re.sub(r"<!--.*?-->", "", page.text)  # no CDN: it works offline


def test_the_server_page_streams_a_question_step_by_step(browser, server, models, tmp_path):
    ref = reference(models, QUESTION, TAU)
    assert [r.escalated for r in ref.records] != [r.escalated for r in reference(models, QUESTION, 0.7).records]
    query = urllib.parse.urlencode({"q": QUESTION, "policy": "rsd", "threshold": str(TAU), "autorun": "1"})
    browser.open(f"{server.url}/?{query}")
    assert (
        browser.wait("['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state") == "done"
    ), browser.js("document.getElementById('steps').innerText")
    dom = browser.js("""(() => Array.from(document.querySelectorAll('#steps .step')).map(s => ({
        author: s.dataset.author, escalated: s.dataset.escalated === 'true',
        badge: s.querySelector('.badge').textContent, text: s.querySelector(':scope > .step-text').textContent,
        proposal: (s.querySelector('.proposal-draft .step-text') || {}).textContent || null,
        head: s.querySelector('.step-head').textContent})))()""")
    assert [(d["author"], d["escalated"], d["text"]) for d in dom] == [
        (r.author, r.escalated, r.text) for r in ref.records
    ]
    for d, r in zip(dom, ref.records):
        assert d["badge"] == ("escalated \u2192 target" if r.escalated else "draft \u2713 kept")
        assert d["proposal"] == (r.draft.text if r.author == "target" else None)
        assert f"PRM(draft) {shown_number(r.scores['prm_draft'])}" in d["head"]
        assert f"{r.n_tokens} tok" in d["head"]
    usage = browser.js("document.getElementById('usage').innerText")
    assert f"steps\t{len(ref.records)}" in usage and "latency (server)" in usage
    assert f"target tokens\t{ref.counts['target_tokens']}" in usage
    assert browser.js("document.getElementById('policy').options.length") >= 5
    browser.screenshot(tmp_path / "serve_page.png")
    assert (tmp_path / "serve_page.png").read_bytes()[:4] == b"\x89PNG"
