"""Engine overhead: wall time of a run against the time spent inside model forward passes.

Everything the engine and the in-process backend do besides the forward pass (scheduling the policies,
assembling batched KV caches, sampling, log-probs and entropies, detokenising to find the separator,
bookkeeping) shows up as the ratio wall / forward; the goal is <= 1.10.

The workload is fixed so every configuration does the same work: random-weight Qwen2 models, steps of
exactly `--step-tokens` tokens (the random models never write the separator, so each step stops at the
length limit), `--steps` steps per problem, the router policy with a synthetic router that escalates a fixed,
seeded share of the steps. Forward time is measured with hooks on each model's top-level module (with a CUDA
synchronise around it on a GPU), so it includes every forward of the draft and the target, nothing else.

    python bench/engine_overhead.py                 # CPU, a few sizes, prints a table, writes JSON
    python bench/engine_overhead.py --device cuda --sizes 1024x8,2048x16
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import finish, spread

from arbitrage.backends.hf import HFGenerator
from arbitrage.engine import Engine, EngineConfig, Models
from arbitrage.policies import make_policy
from arbitrage.testing import ShareRouter, make_causal_lm
from arbitrage.timing import ForwardTimer
from arbitrage.types import Problem


def build(root: str, hidden: int, layers: int) -> tuple[str, str]:
    draft, target = os.path.join(root, f"d{hidden}x{layers}"), os.path.join(root, f"t{hidden}x{layers}")
    heads = max(2, hidden // 64)
    if not os.path.exists(draft):
        make_causal_lm(draft, hidden=max(32, hidden // 2), layers=max(1, layers // 2), heads=max(2, heads // 2))
        make_causal_lm(target, hidden=hidden, layers=layers, heads=heads, seed=1)
    return draft, target


def measure(draft_dir, target_dir, policy: str, concurrency: int, args) -> dict:
    gens, timers = {}, []
    for role, path in (("draft", draft_dir), ("target", target_dir)):
        g = HFGenerator.from_pretrained(path, name=role, device=args.device, dtype=args.dtype)
        timers.append(ForwardTimer(g.model))
        gens[role] = g
    pol = make_policy(policy, 0.5 if policy == "router" else None)
    models = Models(**{r: gens[r] for r in ("draft", "target") if r in pol.needs})
    if policy == "router":
        models.router = ShareRouter(args.escalate)
    problems = [
        Problem(id=f"p{i}", question=f"q{i}", prompt=f"Question {i}: what is {i} * {i + 3}?\n\n")
        for i in range(args.problems)
    ]
    cfg = EngineConfig(
        max_steps=args.steps, max_step_tokens=args.step_tokens, concurrency=concurrency, max_total_tokens=10**6
    )
    Engine(
        pol,
        Models(
            **{r: gens[r] for r in ("draft", "target") if r in pol.needs}
            | ({"router": models.router} if models.router else {})
        ),
        cfg,
    ).run(problems[:2], lambda r: None)
    walls, forwards, overheads = [], [], []
    for _ in range(args.repeats):
        for t in timers:
            t.reset()
        done = []
        t0 = time.perf_counter()
        Engine(pol, models, cfg).run(problems, done.append)
        walls.append(time.perf_counter() - t0)
        forwards.append(sum(t.seconds for t in timers))
        overheads.append(walls[-1] / forwards[-1])
    tokens = sum(
        r.counts["draft_tokens_accepted"] + r.counts["draft_tokens_discarded"] + r.counts["target_tokens"] for r in done
    )
    wall = statistics.fmean(walls)
    return {
        "policy": policy,
        "concurrency": concurrency,
        "wall_s": wall,
        "forward_s": statistics.fmean(forwards),
        "overhead": spread(overheads),
        "forward_calls": sum(t.calls for t in timers),
        "tokens": tokens,
        "ms_per_token": 1000 * wall / tokens,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256x4,512x8", help="target HIDDENxLAYERS list (draft: half of each)")
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--policies", default="target,router")
    p.add_argument("--problems", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--step-tokens", type=int, default=32)
    p.add_argument("--escalate", type=float, default=0.3, help="share of steps the synthetic router escalates")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="runs of each configuration (their spread is reported)")
    p.add_argument("--models-dir", default=os.path.join(tempfile.gettempdir(), "arbitrage-bench-models"))
    p.add_argument("--json", default="bench/results/engine_overhead.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes.split(","):
        hidden, layers = (int(x) for x in size.split("x"))
        d, t = build(args.models_dir, hidden, layers)
        for policy in args.policies.split(","):
            for conc in (int(c) for c in args.concurrency.split(",")):
                r = measure(d, t, policy, conc, args) | {"size": size}
                rows.append(r)
                print(
                    f"{size:>9} {policy:>7} batch {conc:>2}: wall {r['wall_s']:7.2f}s  forward "
                    f"{r['forward_s']:7.2f}s  overhead x{r['overhead']['mean']:.3f}  {r['ms_per_token']:.2f} "
                    f"ms/token",
                    file=sys.stderr,
                )
    lines = [
        f"means of {args.repeats} runs; wall / forward with its min-max over the runs",
        "| target size | policy | batch | wall s | forward s | wall / forward (min-max) | ms/token |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o = r["overhead"]
        lines.append(
            f"| {r['size']} | {r['policy']} | {r['concurrency']} | {r['wall_s']:.2f} | {r['forward_s']:.2f} | "
            f"{o['mean']:.3f} ({o['min']:.3f}-{o['max']:.3f}) | {r['ms_per_token']:.2f} |"
        )
    finish(
        {
            "args": vars(args),
            "device": args.device,
            "torch": torch.__version__,
            "machine": platform.platform(),
            "rows": rows,
        },
        args.json,
        lines,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
