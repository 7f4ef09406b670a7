"""A fake OpenAI-compatible completions server with a fixed per-token latency, standing in for a vLLM/SGLang
server of a draft or target model in tests and benchmarks (`bench/engine_parallel.py`).

Each request is answered after `per_token_s` x tokens written (requests overlap freely, as on a server that
batches them), with a deterministic step: "step K" for the K-th step of a problem (K = the number of separators
already in the prompt), and after `steps` steps "The answer is \\boxed{1}" ending at end-of-sequence. It returns
per-token log-probs and two top alternatives per token, so clients read entropies as from vLLM.

Run one by hand: `python -m arbitrage.testing.fake_server --port 8091 --per-token-ms 10`.
"""

import argparse
import asyncio
import time

from ..types import DEFAULT_SEPARATOR


def make_app(
    name: str = "fake",
    per_token_s: float = 0.01,
    tokens_per_step: int = 8,
    steps: int = 4,
    separator: str = DEFAULT_SEPARATOR,
    capacity: int = 0,
):
    """`capacity` > 0: at most that many requests are served at once (the rest wait, as on a server whose batch
    is full); 0: no limit. `app.state.prompts` keeps every prompt answered (tests)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title=f"fake OpenAI-compatible server ({name})")
    app.state.requests = 0
    app.state.in_flight = 0
    app.state.max_in_flight = 0
    app.state.busy_s = 0.0
    app.state.prompts = []
    slots = asyncio.Semaphore(capacity) if capacity > 0 else None

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "root": None}]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            return JSONResponse({"error": {"message": "this fake server takes text prompts"}}, status_code=400)
        k = prompt.count(separator)
        last = k + 1 >= steps
        n = max(1, min(int(body.get("max_tokens") or tokens_per_step), tokens_per_step))
        app.state.requests += 1
        app.state.prompts.append(prompt)
        if slots is not None:
            await slots.acquire()
        app.state.in_flight += 1
        app.state.max_in_flight = max(app.state.max_in_flight, app.state.in_flight)
        t0 = time.perf_counter()
        try:
            await asyncio.sleep(per_token_s * n)
        finally:
            app.state.in_flight -= 1
            app.state.busy_s += time.perf_counter() - t0
            if slots is not None:
                slots.release()
        if n < tokens_per_step:
            text, finish, stop_reason = f"step {k} " + "x" * (n - 1), "length", None
        elif last:
            text, finish, stop_reason = "The answer is \\boxed{1}", "stop", None
        else:
            text, finish, stop_reason = f"step {k}", "stop", separator
        choice = {
            "index": 0,
            "text": text,
            "finish_reason": finish,
            "stop_reason": stop_reason,
            "logprobs": {
                "tokens": [f"t{i}" for i in range(n)],
                "token_logprobs": [-0.1] * n,
                "top_logprobs": [{f"t{i}": -0.1, "alt": -2.4} for i in range(n)],
            },
        }
        return {
            "id": f"cmpl-{app.state.requests}",
            "object": "text_completion",
            "model": name,
            "choices": [choice],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n},
        }

    return app


def main(argv=None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8091)
    ap.add_argument("--name", default="fake")
    ap.add_argument("--per-token-ms", type=float, default=10.0)
    ap.add_argument("--tokens-per-step", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--capacity", type=int, default=0, help="requests served at once (0: no limit)")
    a = ap.parse_args(argv)
    uvicorn.run(
        make_app(a.name, a.per_token_ms / 1000, a.tokens_per_step, a.steps, capacity=a.capacity),
        host=a.host,
        port=a.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
