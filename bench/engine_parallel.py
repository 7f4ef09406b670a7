#!/usr/bin/env python3
"""The engine with models working at the same time against the engine that calls one model at a time.

Draft and target are two OpenAI-compatible servers (the project's fake server, fixed per-token latency, requests
overlapping as on a batching server; or any real pair given by URL); the router is a scripted one that escalates
a fixed, seeded share of steps, so both engines make exactly the same decisions and only the scheduling
differs. Measured side by side in one run, several repetitions alternating the two engines:

- throughput (problems/s) with `--concurrency` problems in flight (default 8);
- batch-size-1 latency (one problem at a time), where nothing can overlap: the new engine must not be slower.

    python bench/engine_parallel.py                         # fake servers, 10 ms/token each
    python bench/engine_parallel.py --draft-url http://127.0.0.1:8091/v1 --target-url http://127.0.0.1:8092/v1 \\
        --server-api llamacpp --problems 16                  # a real pair (prompts from GSM8K)

Prints a table and writes JSON (default bench/results/engine_parallel.json).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import finish, spread, wait_healthy

from arbitrage.engine import Engine, EngineConfig, Models
from arbitrage.policies import make_policy
from arbitrage.testing import ShareRouter
from arbitrage.types import Problem


def make_problems(n: int, source: str | None) -> list[Problem]:
    if source:
        from arbitrage.data import load_problems

        return load_problems(source, limit=n, template="qwen-math-cot")
    return [Problem(id=f"p{i}", question=f"q{i}", prompt=f"Problem {i}.\n\n") for i in range(n)]


def start_fake(role: str, ms: float, tokens: int, steps: int, port: int, capacity: int = 0):
    """A fake OpenAI-compatible server in its own process (arbitrage.testing.fake_server)."""
    import subprocess

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "arbitrage.testing.fake_server",
            "--name",
            role,
            "--port",
            str(port),
            "--per-token-ms",
            str(ms),
            "--tokens-per-step",
            str(tokens),
            "--steps",
            str(steps),
            "--capacity",
            str(capacity),
        ]
    )
    return wait_healthy(proc, port, f"the fake {role} server")


def run_once(models: Models, problems, concurrency: int, parallel: bool, cfg_kw: dict) -> dict:
    cfg = EngineConfig(concurrency=concurrency, parallel=parallel, **cfg_kw)
    done = []
    t0 = time.perf_counter()
    Engine(make_policy("router", 0.5), models, cfg).run(problems, done.append)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "problems_per_s": len(done) / wall,
        "latency_s_mean": statistics.fmean(r.latency_s for r in done),
        "steps": sum(len(r.steps) for r in done),
        "target_calls": sum(r.counts["target_calls"] for r in done),
        "solutions": {r.problem.id: r.solution for r in done},
    }


CONFIGS = (  # (escalation rate, draft ms/token, target ms/token)
    (0.5, 5.0, 10.0),  # both servers equally loaded: the draft works every step, the target on half of them
    (0.5, 10.0, 10.0),  # equal per-token latency: the target's server is idle half the time anyway
    (0.3, 3.0, 10.0),  # equally loaded at a lower escalation rate
)


def measure(models, problems, b1, a, cfg_kw) -> dict:
    runs = {"parallel": [], "serial": [], "parallel_b1": [], "serial_b1": []}
    run_once(models, problems[:2], 2, True, cfg_kw)  # warm-up: connections, servers
    for rep in range(a.repeats):
        order = [True, False] if rep % 2 == 0 else [False, True]  # alternate, so drift hits both alike
        for parallel in order:
            name = "parallel" if parallel else "serial"
            runs[name].append(run_once(models, problems, a.concurrency, parallel, cfg_kw))
            runs[name + "_b1"].append(run_once(models, b1, 1, parallel, cfg_kw))
            print(
                f"  rep {rep} {name}: {runs[name][-1]['problems_per_s']:.2f} problems/s; batch 1 "
                f"{runs[name + '_b1'][-1]['latency_s_mean']:.3f} s/problem",
                file=sys.stderr,
                flush=True,
            )
    first = runs["parallel"][0]["solutions"]
    same = all(r["solutions"] == first for r in runs["parallel"] + runs["serial"])
    # a real server's batched kernels need not be batch-invariant: greedy text can change with what shares the batch
    differing = max(
        sum(r["solutions"].get(k) != v for k, v in first.items()) for r in runs["parallel"] + runs["serial"]
    )

    tp = [p["problems_per_s"] / s["problems_per_s"] for p, s in zip(runs["parallel"], runs["serial"])]
    lat = [p["latency_s_mean"] / s["latency_s_mean"] for p, s in zip(runs["parallel_b1"], runs["serial_b1"])]
    return {
        "steps_per_run": runs["parallel"][0]["steps"],
        "target_calls_per_run": runs["parallel"][0]["target_calls"],
        "same_outputs": same,
        "problems_with_other_text": differing,
        "throughput_problems_per_s": {
            "parallel": spread(r["problems_per_s"] for r in runs["parallel"]),
            "serial": spread(r["problems_per_s"] for r in runs["serial"]),
        },
        "throughput_ratio": spread(tp),
        "batch1_latency_s": {
            "parallel": spread(r["latency_s_mean"] for r in runs["parallel_b1"]),
            "serial": spread(r["latency_s_mean"] for r in runs["serial_b1"]),
        },
        "batch1_latency_ratio": spread(lat),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draft-url"), ap.add_argument("--target-url")
    ap.add_argument("--server-api", default="completions", choices=["completions", "llamacpp"])
    ap.add_argument("--data", help="prompts for a real pair (e.g. gsm8k); default: synthetic prompts")
    ap.add_argument("--rate", type=float, default=0.5, help="given servers: share of steps the router escalates")
    ap.add_argument("--tokens-per-step", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="fake servers: steps per problem")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-step-tokens", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=12)
    ap.add_argument("--port", type=int, default=18091, help="fake servers: draft on PORT, target on PORT+1")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "engine_parallel.json"))
    a = ap.parse_args(argv)

    from arbitrage.backends.openai_compat import OpenAICompletionsGenerator

    cfg_kw = {"max_steps": a.max_steps, "max_step_tokens": a.max_step_tokens, "max_total_tokens": 4096}
    problems = make_problems(a.problems, a.data)
    b1 = problems[: max(2, a.problems // 4)]
    given = bool(a.draft_url and a.target_url)
    configs = [(a.rate, None, None)] if given else list(CONFIGS)
    report = {
        "problems": a.problems,
        "concurrency": a.concurrency,
        "repeats": a.repeats,
        "tokens_per_step": a.tokens_per_step,
        "batch1_problems": len(b1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "configs": [],
    }
    lines = [
        f"engine_parallel: {a.problems} problems, {a.concurrency} in flight, a scripted router, "
        f"{a.repeats} repetitions alternating the engines (one call at a time = the engine before lanes)",
        f"{'setup':<44}{'parallel /s':>12}{'serial /s':>11}{'ratio (min-max)':>20}{'b1 ratio (min-max)':>24}"
        f"{'other text':>11}",
    ]
    for rate, d_ms, t_ms in configs:
        servers = []
        if given:
            urls, kind = {"draft": a.draft_url, "target": a.target_url}, f"given servers, router {rate:.0%}"
        else:  # each fake server in its own process, as real servers are (not competing for this one's GIL)
            urls = {}
            for role, ms, port in (("draft", d_ms, a.port), ("target", t_ms, a.port + 1)):
                servers.append(start_fake(role, ms, a.tokens_per_step, a.steps, port))
                urls[role] = f"http://127.0.0.1:{port}/v1"
            kind = f"fake {d_ms:g}/{t_ms:g} ms per token, router {rate:.0%}"
        print(kind, file=sys.stderr, flush=True)
        gens = {
            role: OpenAICompletionsGenerator(url, name=role, api=a.server_api, concurrency=64, tokenizer=None)
            for role, url in urls.items()
        }
        models = Models(draft=gens["draft"], target=gens["target"], router=ShareRouter(rate))
        try:
            row = {
                "setup": kind,
                "escalation_rate_scripted": rate,
                "draft_ms_per_token": d_ms,
                "target_ms_per_token": t_ms,
                **measure(models, problems, b1, a, cfg_kw),
            }
        finally:
            for g in gens.values():
                g.close()
            for s in servers:
                s.terminate()
                s.wait(10)
        report["configs"].append(row)
        tp, r, b = row["throughput_problems_per_s"], row["throughput_ratio"], row["batch1_latency_ratio"]
        lines.append(
            f"{kind:<44}{tp['parallel']['mean']:>12.2f}{tp['serial']['mean']:>11.2f}"
            f"{r['mean']:>8.2f}x ({r['min']:.2f}-{r['max']:.2f}){b['mean']:>11.3f} ({b['min']:.3f}-{b['max']:.3f})"
            f"{row['problems_with_other_text']:>6}/{a.problems}"
        )
    lines.append(
        "ratio: throughput, parallel engine / one call at a time, per repetition; b1 ratio: batch-size-1 "
        "latency, the same (1 = no worse); other text: problems whose text differed between runs"
    )
    return finish(report, a.out, lines)


if __name__ == "__main__":
    main()
