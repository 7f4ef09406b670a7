"""Verifying the draft's proposal on a served target (backends/served_speculation.py): a greedy step is exactly
the plain path's, whether the proposal is the target's own step, diverges part-way or is unrelated; with
vLLM's prompt_logprobs and SGLang's input_top_logprobs layouts (servers that run a real model here: the testbed
target behind the two APIs), and live against vLLM's CPU build."""

from __future__ import annotations

import pytest
import torch
from fastapi import FastAPI, Request  # at module level: the routes' annotations are strings here

from arbitrage.backends.openai_compat import OpenAICompletionsGenerator
from arbitrage.server.running import serving
from arbitrage.testbed.plugin import shipped_model_dir
from arbitrage.testbed.task import make_problems
from arbitrage.types import GenerationRequest, Step

SEP = "\n\n"


def model_server(kind: str):
    """An app answering like vLLM (/v1/completions with prompt_logprobs) or SGLang (/generate with
    input_top_logprobs) from the testbed target, greedy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = shipped_model_dir("testbed:target")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    app = FastAPI()
    app.state.calls = []

    def greedy(ids: list[int], n: int) -> tuple[list[int], str]:
        out = []
        with torch.no_grad():
            for _ in range(n):
                t = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
                out.append(t)
                if t == tok.eos_token_id:
                    return out, "eos"
                if SEP in tok.decode(out):
                    return out, "stop"
        return out, "length"

    def top(ids: list[int], start: int) -> list[tuple[int, int, float]]:
        """(prompt token, top token, top log-prob) at each prompt position from `start`."""
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
        return [(ids[j], int(logp[j - 1].argmax()), float(logp[j - 1].max())) for j in range(max(1, start), len(ids))]

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "target", "object": "model", "owned_by": kind, "root": path}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        ids, n = body["prompt"], body["max_tokens"]
        app.state.calls.append(("completions", len(ids), body.get("prompt_logprobs")))
        out, why = greedy(ids, n)
        choice = {
            "text": tok.decode(out[:-1] if why == "eos" else out),
            "token_ids": out,
            "finish_reason": "length" if why == "length" else "stop",
            "stop_reason": SEP if why == "stop" else None,
        }
        if why == "stop":
            text = tok.decode(out)
            choice["text"] = text[: text.index(SEP)]
        if body.get("prompt_logprobs"):
            choice["prompt_logprobs"] = [None] + [
                {str(t): {"logprob": -0.5, "rank": 1 if t == b else 2}, str(b): {"logprob": lp, "rank": 1}}
                for t, b, lp in top(ids, 1)
            ]
        return {"choices": [choice]}

    @app.post("/generate")
    async def generate(request: Request):
        body = await request.json()
        ids, start = body["input_ids"], body["logprob_start_len"]
        app.state.calls.append(("generate", len(ids), start))
        out, _ = greedy(ids, 1)
        return {
            "text": tok.decode(out),
            "meta_info": {
                "input_top_logprobs": [None] * (start == 0) + [[[lp, b, None]] for _, b, lp in top(ids, max(1, start))],
                "output_token_logprobs": [[0.0, out[0], None]],
            },
        }

    return app, tok


def proposals(plain: list, tok) -> list[Step]:
    """The target's own steps, the same steps with one token changed part-way, and unrelated text."""
    out = []
    for k, g in enumerate(plain):
        step = Step("draft", g.text, g.stop, len(g.token_ids))
        ids = list(tok(g.text, add_special_tokens=False)["input_ids"])
        if k % 3 == 1 and len(ids) > 4:  # one token changed part-way
            seven, three = tok.convert_tokens_to_ids("7"), tok.convert_tokens_to_ids("3")
            ids[len(ids) // 2] = seven if ids[len(ids) // 2] != seven else three
            step = Step("draft", tok.decode(ids), g.stop, len(ids))
        if k % 3 == 2:
            step = Step("draft", "x = 1 + 1 = 2", "separator", 9)
        out.append(step)
    return out


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_served_verification_writes_the_plain_step(kind):
    app, tok = model_server(kind)
    probs = make_problems("test", 6, seed=2)
    with serving(app) as s:
        gen = OpenAICompletionsGenerator(s.url + "/v1", name="target")
        assert gen.verify_route == kind and gen.tokenizer is not None
        reqs = [GenerationRequest(p.id, p.prompt, [], 48, 0) for p in probs]
        plain = gen.generate(reqs)
        props = proposals(plain, tok)
        app.state.calls.clear()
        verified = gen.generate(
            [GenerationRequest(r.key, r.prompt, [], 48, 0, speculation=d) for r, d in zip(reqs, props)]
        )
        for g, v in zip(plain, verified):
            assert (v.text, v.stop) == (g.text, g.stop)
            spec = v.extras["speculation"]
            assert spec["proposed"] > 0 and 0 <= spec["kept"] <= spec["proposed"]
        kept = [v.extras["speculation"]["kept"] for v in verified]
        assert kept[0] == verified[0].extras["speculation"]["proposed"]  # its own step: every token kept
        assert kept[2] < kept[0]  # an unrelated proposal keeps little
        assert sum(1 for c in app.state.calls if c[0] == ("completions" if kind == "vllm" else "generate")) >= 6
        sampled = gen.generate(
            [
                GenerationRequest(
                    "s",
                    probs[0].prompt,
                    [],
                    48,
                    0,
                    speculation=props[0],
                    sampling=__import__("arbitrage").types.Sampling(temperature=0.8, seed=1),
                )
            ]
        )
        assert "speculation" not in sampled[0].extras  # no distributions from a server: written as usual


@pytest.mark.live
@pytest.mark.slow
def test_live_vllm_verification_equals_the_plain_path():
    from transformers import AutoTokenizer
    from vllm_server import SEPARATOR, shared_servers, tiny_models  # noqa: F401

    servers = shared_servers()
    gen = OpenAICompletionsGenerator(servers["lm"].url + "/v1", name="target")
    assert gen.verify_route == "vllm"
    tok = AutoTokenizer.from_pretrained(tiny_models()["lm"])
    prompts = ["What is 3 + 4?", "Let x = 5.", "abc", "Let a = 37. b = a * 4. What is b?", "b = 3", "7 + 8 = "]
    reqs = [GenerationRequest(f"p{i}", p, [], 12, 0) for i, p in enumerate(prompts)]
    plain = gen.generate(reqs)
    props = proposals(plain, tok)
    verified = gen.generate([GenerationRequest(r.key, r.prompt, [], 12, 0, speculation=d) for r, d in zip(reqs, props)])
    assert [(v.text, v.stop) for v in verified] == [(g.text, g.stop) for g in plain]
    assert all("speculation" in v.extras for v in verified)
