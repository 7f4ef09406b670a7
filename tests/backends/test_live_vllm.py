"""Live: the server backends against a real vLLM (CPU build) on 127.0.0.1, checked against transformers running
the same tiny models in-process. The servers are started once per session (see vllm_server.py)."""

import pytest
import torch
from vllm_server import SEPARATOR, tiny_models

from arbitrage.backends.openai_compat import OpenAICompletionsGenerator
from arbitrage.backends.pooling import PoolingPRM, PoolingRouter
from arbitrage.types import GenerationRequest, RouteRequest, ScoreRequest, Step

pytestmark = [pytest.mark.live, pytest.mark.slow]

# Prompts whose greedy continuations by the tiny LM end at the separator, at the length limit and at eos.
PROMPTS = ["What is 3 + 4?", "Let x = 5.", "abc", "Let a = 37. b = a * 4. What is b?", "b = 3", "x", "7 + 8 = "]
MAX_NEW = [12, 12, 12, 12, 12, 2, 12]


@pytest.fixture(scope="module")
def lm():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_models()["lm"]
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def reference(model, tok, prompt: str, max_new: int):
    """(text, stop, step ids, log-probs) of a greedy step by transformers, as the in-process backend keeps it."""
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=0,
            output_scores=True,
            return_dict_in_generate=True,
            output_logits=True,
        )
    new = out.sequences[0, len(ids) :].tolist()
    lps = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.logits, new)]
    for k, t in enumerate(new):
        if t == tok.eos_token_id:
            return tok.decode(new[:k]), "eos", new[:k], lps[: k + 1]
        text = tok.decode(new[: k + 1])
        if SEPARATOR in text:  # the separator is one token or two "\n" tokens here
            return text[: text.index(SEPARATOR)], "separator", new[: k + 1], lps[: k + 1]
    return tok.decode(new), "length", new, lps


def test_steps_stops_and_logprobs_match_transformers(vllm_servers, lm):
    model, tok = lm
    gen = OpenAICompletionsGenerator(vllm_servers["lm"].url + "/v1", name="draft")
    assert gen.model == "tiny-lm"
    got = gen.generate([GenerationRequest(f"p{i}", p, [], n, 0) for i, (p, n) in enumerate(zip(PROMPTS, MAX_NEW))])
    stops = set()
    for prompt, n, g in zip(PROMPTS, MAX_NEW, got):
        text, stop, ids, lps = reference(model, tok, prompt, n)
        assert (g.text, g.stop, g.token_ids) == (text, stop, ids), prompt
        assert g.logprobs == pytest.approx(lps, abs=1e-4)
        assert SEPARATOR not in g.text
        stops.add(g.stop)
    assert stops == {"separator", "eos", "length"}


def test_token_id_prompts_and_steps_of_other_models(vllm_servers, lm):
    _, tok = lm
    url = vllm_servers["lm"].url
    text_gen = OpenAICompletionsGenerator(url, name="draft")
    ids_gen = OpenAICompletionsGenerator(url, name="draft", tokenizer=tok)
    other = Step("target", "x = 5", "separator", 5, token_ids=[1, 2, 3], extras={"generator": "target"})
    reqs = [GenerationRequest("a", "Let x = 5.", [other], 12, 1), GenerationRequest("b", "abc", [], 6, 0)]
    a, b = text_gen.generate(reqs), ids_gen.generate(reqs)
    assert [(g.text, g.stop, g.token_ids) for g in a] == [(g.text, g.stop, g.token_ids) for g in b]
    # the generator's own step goes back as its own ids
    own = Step("draft", b[1].text, b[1].stop, len(b[1].token_ids), b[1].token_ids, extras=b[1].extras)
    assert ids_gen.prompt_for(GenerationRequest("b", "abc", [own], 4, 1))[-len(own.token_ids) :] == own.token_ids


def test_many_problems_concurrently_within_the_limit(vllm_servers):
    url = vllm_servers["lm"].url
    reqs = [
        GenerationRequest(f"p{i}", PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)), [], 8, 0) for i in range(18)
    ]
    one_by_one = OpenAICompletionsGenerator(url, concurrency=1)
    together = OpenAICompletionsGenerator(url, concurrency=4)
    seq = [one_by_one.generate([r])[0] for r in reqs]
    par = together.generate(reqs)
    assert [(g.text, g.stop) for g in par] == [(g.text, g.stop) for g in seq]
    assert together.http.max_in_flight == 4 and one_by_one.http.max_in_flight == 1


def test_seeded_sampling_is_reproducible(vllm_servers):
    url = vllm_servers["lm"].url
    reqs = [GenerationRequest(f"p{i}", p, [], 10, 0) for i, p in enumerate(PROMPTS[:4])]
    a = OpenAICompletionsGenerator(url, temperature=1.0, seed=5).generate(reqs)
    b = OpenAICompletionsGenerator(url, temperature=1.0, seed=5).generate(reqs)
    c = OpenAICompletionsGenerator(url, temperature=1.0, seed=6).generate(reqs)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]


@pytest.fixture(scope="module")
def classifier():
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(tiny_models()["cls"]).eval()


def last_token_p1(model, ids):
    with torch.no_grad():
        return torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1)[1].item()


STEPS = [Step("draft", "a = 5", "separator", 5), Step("target", "b = a + 2 = 7", "separator", 13)]
CANDS = [Step("draft", "c = b * 3 = 21", "separator", 14), Step("target", "c = 21", "eos", 6)]


def test_prm_over_pooling_matches_transformers(vllm_servers, classifier):
    prm = PoolingPRM(vllm_servers["cls"].url)  # model, and tokenizer from the served directory, discovered
    reqs = [
        ScoreRequest("k1", "Let a = 5. b = a + 2. c = b * 3. What is c?", STEPS, CANDS),
        ScoreRequest("k2", "What is 3 + 4?", [], CANDS[:1]),
    ]
    got = prm.score(reqs)
    want = [[last_token_p1(classifier, prm.row_ids(r.question, r.steps, c)) for c in r.candidates] for r in reqs]
    assert [len(g) for g in got] == [2, 1]
    assert got[0] == pytest.approx(want[0], abs=1e-4) and got[1] == pytest.approx(want[1], abs=1e-4)
    assert len({round(x, 4) for x in got[0]}) == 2  # the two candidates really are read separately


def test_router_over_pooling_matches_transformers(vllm_servers, classifier):
    router = PoolingRouter(vllm_servers["cls"].url, concurrency=3)
    reqs = [RouteRequest(f"k{i}", "Let a = 5. b = a + 2. What is b?", STEPS[: i % 3], CANDS[i % 2]) for i in range(8)]
    got = router.predict(reqs)
    want = [last_token_p1(classifier, router.row_ids(r)) for r in reqs]
    assert got == pytest.approx(want, abs=1e-4)
    assert router.client.http.max_in_flight <= 3
