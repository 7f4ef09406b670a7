"""`arbitrage serve`: an OpenAI-compatible speculative-reasoning server (FastAPI + uvicorn, as vLLM's), and a
small fake OpenAI-compatible completions server of fixed per-token latency for tests and benchmarks."""
