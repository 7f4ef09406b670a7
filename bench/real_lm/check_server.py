#!/usr/bin/env python3
"""Check the project's server clients against the running llama.cpp servers (bench/real_lm/serve.sh start):
one draft step through OpenAICompletionsGenerator on both APIs (llama.cpp /completion and /v1/completions),
a step that ends at end-of-sequence, and the judge PRM on a right and a wrong step. Prints what each returned.

    python bench/real_lm/check_server.py [--draft URL] [--target URL]
"""

from __future__ import annotations

import argparse
import json
import time

from arbitrage.backends.judge_prm import JudgePRM
from arbitrage.backends.openai_compat import OpenAICompletionsGenerator
from arbitrage.prompts import format_prompt
from arbitrage.types import GenerationRequest, ScoreRequest, Step

Q = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips to her friends "
    "in May. How many clips did Natalia sell altogether in April and May?"
)


def show(tag, gen, dt):
    print(
        f"[{tag}] {dt:.2f}s stop={gen.stop} n_ids={len(gen.token_ids)} n_logprobs={len(gen.logprobs or [])} "
        f"entropies={'yes' if 'entropies' in gen.extras else 'no'} text={gen.text[:120]!r}"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draft", default="http://127.0.0.1:8091/v1")
    ap.add_argument("--target", default="http://127.0.0.1:8092/v1")
    ap.add_argument("--steps", type=int, default=12, help="draft steps per API (stops earlier at eos)")
    args = ap.parse_args()
    prompt = format_prompt(Q, "qwen-math-cot")
    for api in ("llamacpp", "completions"):
        g = OpenAICompletionsGenerator(args.draft, name="draft", api=api)
        print(f"--- {api}: model={g.model!r} tokenizer={'local' if g.tokenizer is not None else 'none (text prompts)'}")
        steps: list[Step] = []
        for k in range(args.steps):
            t0 = time.perf_counter()
            (gen,) = g.generate([GenerationRequest("p", prompt, list(steps), 256, k)])
            show(f"{api} step {k}", gen, time.perf_counter() - t0)
            steps.append(
                Step(
                    "draft",
                    gen.text,
                    gen.stop,
                    len(gen.logprobs or gen.token_ids),
                    gen.token_ids,
                    gen.logprobs,
                    dict(gen.extras),
                )
            )
            if gen.stop != "separator":
                break
        g.close()
    raw = OpenAICompletionsGenerator(args.draft, api="llamacpp").http
    body = raw.post_many(
        "/completion",
        [
            {
                "prompt": prompt,
                "n_predict": 40,
                "stop": ["\n\n"],
                "n_probs": 2,
                "return_tokens": True,
                "cache_prompt": True,
            }
        ],
    )[0]
    print(
        "--- raw /completion fields:",
        sorted(body),
        "stop_type",
        body.get("stop_type"),
        "stopping_word",
        repr(body.get("stopping_word")),
        "tokens",
        len(body.get("tokens") or []),
        "probs",
        len(body.get("completion_probabilities") or []),
    )
    body = raw.post_many("/v1/completions", [{"prompt": prompt, "max_tokens": 40, "stop": ["\n\n"], "logprobs": 2}])[0]
    print("--- raw /v1/completions choice:", json.dumps(body["choices"][0])[:400])
    judge = JudgePRM(args.target, api="llamacpp")
    first = Step("draft", "In April, Natalia sold 48 clips.", "separator", 9)
    good = Step("draft", "In May, she sold half as many, so 48 / 2 = 24 clips.", "separator", 15)
    bad = Step("draft", "In May, she sold half as many, so 48 / 2 = 12 clips.", "separator", 15)
    t0 = time.perf_counter()
    right, wrong = judge.score([ScoreRequest("p", Q, [first], [good, bad])])[0]
    print(f"--- judge P(correct): right step {right:.3f}, wrong step {wrong:.3f} ({time.perf_counter() - t0:.2f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
