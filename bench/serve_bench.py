#!/usr/bin/env python3
"""`arbitrage serve` against the engine it wraps: the server's overhead per request, and throughput under load.

The server runs as its own process (`arbitrage serve`, one torch thread), on the testbed's shipped models
in-process (a policy and PRM without a trained router: `rsd` with the noisy checker by default). In this process:

1. overhead: the same problems, one at a time, (a) submitted to one long-lived engine serving in the background, as
   the server's is (the same models, loaded here, one torch thread) and (b) as HTTP requests to the server (the
   `openai` client), alternating problem by problem;
   ratio = mean server latency / mean engine latency (goal <= 1.05);
2. throughput: N requests with 1, 8 and 64 in flight (an async client), problems/s and mean latency.

    python bench/serve_bench.py          # writes bench/results/serve_bench.json and prints a table

The two processes share the machine's cores, so (a) and (b) run alternately, never at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import finish, spread, wait_healthy


def start_server(port: int, args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "arbitrage.cli", "serve", "--port", str(port), "--threads", "1", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return wait_healthy(proc, port, "arbitrage serve", timeout_s=180)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default="rsd")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--prm", default="testbed-checker:0.1:0.1")
    ap.add_argument("--overhead-problems", type=int, default=40)
    ap.add_argument("--load-problems", type=int, default=128)
    ap.add_argument("--levels", default="1,8,64")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each load level (their spread is reported)")
    ap.add_argument("--port", type=int, default=18111)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "serve_bench.json"))
    a = ap.parse_args(argv)

    import openai
    import torch

    from arbitrage.engine import Engine, EngineConfig
    from arbitrage.evidence import paired_ratio_ci
    from arbitrage.factory import ModelOptions, build_models
    from arbitrage.policies import make_policy
    from arbitrage.testbed.task import make_problems
    from arbitrage.types import Problem

    torch.set_num_threads(1)
    limits = ["--max-steps", "10", "--max-step-tokens", "48", "--max-total-tokens", "320"]
    specs = {"draft": "testbed:draft", "target": "testbed:target", "prm": a.prm}
    server = start_server(
        a.port,
        [
            "--policy",
            a.policy,
            "--threshold",
            str(a.threshold),
            "--draft",
            specs["draft"],
            "--target",
            specs["target"],
            "--prm",
            specs["prm"],
            "--max-concurrency",
            "64",
            *limits,
        ],
    )
    url = f"http://127.0.0.1:{a.port}/v1"
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
        models = build_models({"draft", "target", "prm"}, specs, ModelOptions(device="cpu", dtype="float32"))
        policy = make_policy(a.policy, a.threshold)
        cfg = EngineConfig(max_steps=10, max_step_tokens=48, max_total_tokens=320, concurrency=1)
        probs = make_problems("test", a.overhead_problems, seed=7)
        # The direct side is what the server wraps: one long-lived engine serving in the background (its own
        # thread), problems submitted to it one at a time, so both sides pay the same engine start-up (once).
        direct = Engine(policy, models, cfg)
        direct.start()
        for p in probs[:3]:  # warm-up both sides
            client.completions.create(model="arbitrage", prompt=p.prompt)
            direct.submit(Problem("w" + p.id, p.prompt, p.prompt)).wait()
        engine_s, server_s, same = [], [], 0
        for i, p in enumerate(probs):
            done = []
            order = ("engine", "server") if i % 2 == 0 else ("server", "engine")
            for side in order:
                if side == "engine":
                    t0 = time.perf_counter()
                    done.append(direct.submit(Problem(f"e{i}", p.prompt, p.prompt)).wait())
                    engine_s.append(time.perf_counter() - t0)
                else:
                    t0 = time.perf_counter()
                    text = client.completions.create(model="arbitrage", prompt=p.prompt).choices[0].text
                    server_s.append(time.perf_counter() - t0)
            same += text == done[0].solution
        direct.stop()
        ratio = paired_ratio_ci(server_s, engine_s)
        per = [s / e for s, e in zip(server_s, engine_s)]
        report = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "policy": policy.describe(),
            "prm": a.prm,
            "models": "testbed:draft / testbed:target in-process",
            "overhead": {
                "problems": len(probs),
                "engine_s_mean": statistics.fmean(engine_s),
                "server_s_mean": statistics.fmean(server_s),
                "ratio": ratio["ratio"],
                "ratio_ci95": ratio["ci95"],
                "ratio_median_per_problem": statistics.median(per),
                "same_text": same,
            },
            "throughput": [],
        }
        del models  # free this process's copy before the load test

        async def load(n_flight: int, prompts: list[str]):
            aclient = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
            sem = asyncio.Semaphore(n_flight)
            lat = []

            async def one(p):
                async with sem:
                    t0 = time.perf_counter()
                    await aclient.completions.create(model="arbitrage", prompt=p)
                    lat.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            await asyncio.gather(*(one(p) for p in prompts))
            wall = time.perf_counter() - t0
            await aclient.close()
            return wall, lat

        prompts = [p.prompt for p in make_problems("test", a.load_problems, seed=8)]
        for level in (int(x) for x in a.levels.split(",")):
            n = min(len(prompts), max(16, 2 * level)) if level == 1 else len(prompts)
            runs = [asyncio.run(load(level, prompts[:n])) for _ in range(a.repeats)]
            lat = [x for _, lats in runs for x in lats]
            report["throughput"].append(
                {
                    "in_flight": level,
                    "requests": n,
                    "problems_per_s": spread(n / wall for wall, _ in runs),
                    "latency_s_mean": statistics.fmean(lat),
                    "latency_s_p90": sorted(lat)[int(0.9 * (len(lat) - 1))],
                }
            )
            print(
                f"{level} in flight: {report['throughput'][-1]['problems_per_s']['mean']:.2f} problems/s",
                file=sys.stderr,
                flush=True,
            )
        metrics = httpx.get(url.replace("/v1", "/metrics")).text
        report["server_errors"] = sum(
            1 for line in metrics.splitlines() if line.startswith("arbitrage_requests_total") and 'status="5' in line
        )
    finally:
        server.terminate()
        server.wait(20)
    o = report["overhead"]
    lines = [
        f"serve_bench: {report['policy']}, PRM {a.prm}, testbed models in-process, 1 torch thread each side",
        f"overhead, {o['problems']} problems one at a time: engine {o['engine_s_mean'] * 1000:.1f} ms, server "
        f"{o['server_s_mean'] * 1000:.1f} ms per problem: {o['ratio']:.3f}x (95% CI "
        f"{o['ratio_ci95'][0]:.3f}-{o['ratio_ci95'][1]:.3f}, paired bootstrap over problems; median per problem "
        f"{o['ratio_median_per_problem']:.3f}x); same text {o['same_text']}/{o['problems']}",
        f"{'in flight':>10}{'requests':>10}{'problems/s (min-max over ' + str(a.repeats) + ' runs)':>36}"
        f"{'latency mean (s)':>18}{'p90 (s)':>9}",
    ]
    for t in report["throughput"]:
        tp = t["problems_per_s"]
        lines.append(
            f"{t['in_flight']:>10}{t['requests']:>10}{tp['mean']:>20.2f} ({tp['min']:.2f}-{tp['max']:.2f})"
            f"{t['latency_s_mean']:>18.3f}{t['latency_s_p90']:>9.3f}"
        )
    return finish(report, a.out, lines)


if __name__ == "__main__":
    main()
