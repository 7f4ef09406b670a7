#!/usr/bin/env python3
"""How router-data generation (`arbitrage run --policy generate`) scales with problems in flight, with Ray
tasks and with replicas per model role, on fake servers of fixed per-token latency that serve at most
`--capacity` requests at once (as a server whose batch is full): each configuration is `--repeats` runs of the
same problems, in this process (or as Ray tasks), the servers in their own processes (started fresh for each
configuration).

    python bench/scaleout.py        # writes bench/results/scaleout.json and prints a table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import finish, spread
from engine_parallel import start_fake

CONFIGS = ((1, 1), (4, 1), (16, 1), (16, 2), (32, 2), (32, 4))  # (problems in flight, replicas per role)
# The same jobs as Ray tasks (`--ray --ray-tasks T`, each task a shard with its own engine and clients, joined
# afterwards): (problems in flight per task, replicas per role, tasks). A local Ray cluster on this machine, started
# once before the timed runs (its start is reported apart); each run pays its tasks' worker start and the merge.
RAY_CONFIGS = ((8, 2, 2), (16, 4, 2))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=48)
    ap.add_argument("--per-token-ms", type=float, default=5.0)
    ap.add_argument("--tokens-per-step", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--capacity", type=int, default=4, help="requests each fake server serves at once")
    ap.add_argument("--port", type=int, default=18201)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each configuration (their spread is reported)")
    ap.add_argument("--no-ray", action="store_true", help="leave out the Ray rows (no ray extra installed)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "scaleout.json"))
    a = ap.parse_args(argv)
    ray_start_s = None
    if not a.no_ray:
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_start_s = time.perf_counter() - t0

    from arbitrage.cli import main as cli

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "problems.jsonl")
        with open(data, "w") as f:
            for i in range(a.problems):
                f.write(
                    json.dumps({"id": f"p{i}", "question": f"Problem {i}.", "answer": "1", "prompt": f"Problem {i}."})
                    + "\n"
                )
        configs = [(c, r, None) for c, r in CONFIGS] + ([] if a.no_ray else list(RAY_CONFIGS))
        for concurrency, replicas, tasks in configs:
            procs, urls = [], {"draft": [], "target": []}
            port = a.port
            for role in ("draft", "target"):
                for _ in range(replicas):
                    procs.append(
                        start_fake(role, a.per_token_ms, a.tokens_per_step, a.steps, port, capacity=a.capacity)
                    )
                    urls[role].append(f"http://127.0.0.1:{port}/v1")
                    port += 1
            walls = []
            try:
                for rep in range(a.repeats):
                    out = os.path.join(tmp, f"c{concurrency}-r{replicas}-t{tasks}-{rep}")
                    ray_args = [] if tasks is None else ["--ray", "--ray-tasks", str(tasks)]
                    t0 = time.perf_counter()
                    rc = cli(
                        [
                            "run",
                            "--policy",
                            "generate",
                            "--draft",
                            ",".join(urls["draft"]),
                            "--target",
                            ",".join(urls["target"]),
                            "--prm",
                            "testbed-checker",
                            "--data",
                            data,
                            "--out",
                            out,
                            "--quiet",
                            "--concurrency",
                            str(concurrency),
                            "--max-steps",
                            "8",
                            *ray_args,
                        ]
                    )
                    walls.append(time.perf_counter() - t0)
                    if rc != 0:
                        raise RuntimeError(f"the run failed ({concurrency} in flight, {replicas} replicas, {tasks})")
            finally:
                for p in procs:
                    p.terminate()
                    p.wait(10)
            w = spread(walls)
            rows.append(
                {
                    "concurrency": concurrency * (tasks or 1),
                    "replicas": replicas,
                    "ray_tasks": tasks,
                    "wall_s": w,
                    "problems_per_s": a.problems / w["mean"],
                }
            )
            how = f" as {tasks} Ray tasks" if tasks else ""
            print(
                f"{concurrency * (tasks or 1)} in flight{how}, {replicas} replica(s): {w['mean']:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    base = rows[0]["wall_s"]["mean"]
    for r in rows:  # against the first configuration's mean; the range from this one's fastest and slowest run
        w = r["wall_s"]
        r["speedup_vs_first"] = {"mean": base / w["mean"], "min": base / w["max"], "max": base / w["min"]}
    report = {
        "setup": f"generate on {a.problems} problems; fake draft and target servers, {a.per_token_ms:g} ms per "
        f"token, {a.tokens_per_step} tokens per step, {a.steps} steps, each serving at most "
        f"{a.capacity} requests at once; PRM: the free testbed checker",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "ray_cluster_start_s": ray_start_s,
        "rows": rows,
    }
    lines = [
        report["setup"] + f"; {a.repeats} runs each",
        f"{'in flight':>10}{'replicas':>10}{'ray tasks':>10}{'wall (s)':>10}{'problems/s':>12}"
        f"{'speed-up (min-max)':>22}",
    ]
    if ray_start_s is not None:
        lines.insert(1, f"local Ray cluster started once in {ray_start_s:.1f} s (not in the rows)")
    for r in rows:
        s = r["speedup_vs_first"]
        lines.append(
            f"{r['concurrency']:>10}{r['replicas']:>10}{r['ray_tasks'] or '-':>10}{r['wall_s']['mean']:>10.2f}"
            f"{r['problems_per_s']:>12.2f}"
            f"{s['mean']:>10.2f}x ({s['min']:.2f}-{s['max']:.2f})"
        )
    return finish(report, a.out, lines)


if __name__ == "__main__":
    main()
