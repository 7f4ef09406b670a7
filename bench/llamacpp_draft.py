#!/usr/bin/env python3
"""llama.cpp's own draft-model speculation as the target's server: what a user of `arbitrage` with llama-server
gets from `llama-server -m target.gguf --model-draft draft.gguf`.

llama-server returns no prompt log-probs, so `arbitrage` cannot verify a draft's step through it (docs/speculation.md);
instead the target's server speculates inside every request with a draft model of its own. This benchmark runs
the `target` policy (every step written by the target's server, through the project's llama.cpp client) against
two or more llama-servers holding the same target GGUF: one plain, the others with `--model-draft` and a given
`--spec-draft-n-max` (and `--spec-type draft-simple`: without it this llama.cpp loads the draft and never drafts).
Problems are interleaved (each problem runs on every server before the next one, the order
rotating per problem, so load on a shared machine hits every side alike), greedy. Reported per speculating server:
latency ratio against the plain server with a 95% paired bootstrap interval over problems, the draft tokens it
proposed and accepted (its Prometheus counters `spec_decode_num_*`, read before and after each problem), tokens
per target verification, accuracy, and how many problems came out with another text (greedy speculation is exact
up to floating-point differences between a batched verification and one-token decoding).

Needs the real-LM benchmark's files: `bench/real_lm/fetch_models.py` (the Qwen2.5-Coder 0.5B/1.5B GGUFs) and
`bench/real_lm/build_servers.sh` (llama-server). GSM8K test problems come with the package (bundled copy).

    python bench/llamacpp_draft.py --n 20 --threads 1      # writes bench/results/llamacpp_draft.json
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import finish, wait_healthy

CACHE = Path(os.environ.get("ARBITRAGE_CACHE", "~/.cache/arbitrage")).expanduser()
GGUF = Path(os.environ.get("ARBITRAGE_GGUF_CACHE", CACHE / "gguf")).expanduser()
FILES = {"draft": "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf", "target": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"}
SPEC_COUNTERS = ("spec_decode_num_draft_tokens_total", "spec_decode_num_accepted_tokens_total")
SPEC_COUNTERS += ("spec_decode_num_drafts_total", "tokens_predicted_total")


def start(name: str, port: int, threads: int, draft_max: int | None, log_dir: Path):
    """One llama-server on 127.0.0.1:`port` holding the target; with `draft_max`, speculating with the draft."""
    cmd = [str(CACHE / "llama-server"), "-m", str(GGUF / FILES["target"]), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-t", str(threads), "-tb", str(threads), "-c", "4096", "-np", "1", "--alias", "target", "--no-webui"]
    cmd += ["--cache-prompt", "--metrics"]
    if draft_max is not None:
        # --spec-type: this llama.cpp infers the kind of speculation from the draft GGUF's metadata and, for a plain
        # model, infers none: --model-draft alone loads the draft and never drafts (its counters stay at 0)
        cmd += ["--model-draft", str(GGUF / FILES["draft"]), "--spec-type", "draft-simple"]
        cmd += ["--spec-draft-n-max", str(draft_max)]
        cmd += ["-td", str(threads), "-tbd", str(threads)]
    log = open(log_dir / f"{name}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    return wait_healthy(proc, port, f"llama-server {name}", timeout_s=600)


def counters(url: str) -> dict[str, float]:
    """The server's speculation and token counters (Prometheus text from /metrics)."""
    import httpx

    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=30).text
    out = {}
    for name in SPEC_COUNTERS:
        m = re.search(rf"^llamacpp:{name}\s+([0-9.eE+-]+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def acceptance_ci(side: list[dict]) -> dict:
    """Accepted / drafted tokens over a side's problems, with a bootstrap interval resampling problems."""
    from arbitrage.evidence import paired_ratio_ci

    accepted = [r["spec_decode_num_accepted_tokens_total"] for r in side]
    return paired_ratio_ci(accepted, [r["spec_decode_num_draft_tokens_total"] for r in side])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="GSM8K test problems (default: %(default)s)")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="threads per server (and per draft)")
    ap.add_argument(
        "--draft-max",
        default="3,8",
        help="comma-separated --spec-draft-n-max values, one speculating server each (llama.cpp's default: 3); "
        "'' for none",
    )
    ap.add_argument(
        "--control",
        action="store_true",
        help="also a second plain server: how often greedy text differs between two plain servers (no speculation)",
    )
    ap.add_argument("--max-steps", type=int, default=10)
    ap.add_argument("--max-step-tokens", type=int, default=128)
    ap.add_argument("--port", type=int, default=18191, help="servers on PORT, PORT+1, ...")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "llamacpp_draft.json"))
    a = ap.parse_args(argv)

    from arbitrage.backends.openai_compat import OpenAICompletionsGenerator
    from arbitrage.data import load_problems
    from arbitrage.engine import Engine, EngineConfig, Models
    from arbitrage.evidence import paired_ratio_ci
    from arbitrage.grading import Grader
    from arbitrage.policies import make_policy

    missing = [str(p) for p in [CACHE / "llama-server"] + [GGUF / f for f in FILES.values()] if not p.exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run bench/real_lm/fetch_models.py and build_servers.sh")
    sides: dict[str, int | None] = {"plain": None}
    if a.control:
        sides["plain again"] = None
    sides |= {f"draft-max {int(d)}": int(d) for d in a.draft_max.split(",") if d.strip()}
    log_dir = CACHE / "run"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs, gens = {}, {}
    try:
        for i, (name, dmax) in enumerate(sides.items()):
            procs[name] = start(name.replace(" ", "-"), a.port + i, a.threads, dmax, log_dir)
            url = f"http://127.0.0.1:{a.port + i}/v1"
            gens[name] = OpenAICompletionsGenerator(url, name="target", api="llamacpp", tokenizer=None)
        problems = load_problems("gsm8k", limit=a.n, offset=a.offset, template="qwen-math-cot")
        cfg = EngineConfig(
            max_steps=a.max_steps,
            max_step_tokens=a.max_step_tokens,
            max_total_tokens=a.max_steps * a.max_step_tokens,
            concurrency=1,
        )
        engines = {n: Engine(make_policy("target", None), Models(draft=g, target=g), cfg) for n, g in gens.items()}
        names = list(sides)
        rows: dict[str, list[dict]] = {n: [] for n in names}
        t0 = time.perf_counter()
        for i, p in enumerate(problems):
            order = names[i % len(names) :] + names[: i % len(names)]  # rotate: each side goes first as often
            for name in order:
                before = counters(gens[name].base_url)
                done: list = []
                engines[name].run([p], done.append)
                after = counters(gens[name].base_url)
                r = done[0]
                rows[name].append(
                    {
                        "id": p.id,
                        "latency_s": r.latency_s,
                        "solution": r.solution,
                        "steps": len(r.steps),
                        "tokens": r.counts["target_tokens"],
                        **{k: after[k] - before[k] for k in SPEC_COUNTERS},
                    }
                )
            drafted = {n: rows[n][-1]["spec_decode_num_draft_tokens_total"] for n in names if sides[n] is not None}
            silent = [n for n, d in drafted.items() if not d]
            if silent and i == 0:  # a speculating server that drafts nothing would measure the plain one twice
                raise SystemExit(f"{', '.join(silent)}: drafted no token, speculation is off (logs in {log_dir})")
            lat = "  ".join(f"{n} {rows[n][-1]['latency_s']:.1f} s" for n in names)
            print(f"{i + 1}/{len(problems)} ({time.perf_counter() - t0:.0f} s): {lat}", file=sys.stderr, flush=True)
    finally:
        for g in gens.values():
            g.close()
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)

    with Grader() as grader:
        gold = {p.id: p.gold for p in problems}
        for name in names:
            for row in rows[name]:
                row["correct"] = bool(grader.grade(row["solution"], gold[row["id"]]).correct)
    plain = rows["plain"]
    report: dict = {
        "target": FILES["target"],
        "draft": FILES["draft"],
        "server": "llama-server (llama.cpp sources of llama-cpp-python 0.3.36), 1 slot, prompt cache on, greedy",
        "policy": "target (every step written by the target's server, through arbitrage's llama.cpp client)",
        "problems": len(plain),
        "threads_per_server": a.threads,
        "machine_cores": os.cpu_count(),
        "sides": {},
    }
    lines = [
        f"llama.cpp draft-model speculation as the target's server: {len(plain)} GSM8K problems, greedy, "
        f"{a.threads} thread(s) per model, sides interleaved problem by problem",
        f"{'server':<16}{'accuracy':>9}{'s/problem':>11}{'tokens/s':>10}{'speed-up vs plain (95% CI)':>30}"
        f"{'accepted':>10}{'tok/verif':>10}{'other text':>11}",
    ]
    for name in names:
        side = rows[name]
        tot = {k: sum(r[k] for r in side) for k in ("latency_s", "tokens", *SPEC_COUNTERS)}
        s = {
            "accuracy": sum(r["correct"] for r in side) / len(side),
            "latency_s_mean": tot["latency_s"] / len(side),
            "tokens_per_s": tot["tokens"] / tot["latency_s"],
            "other_text_than_plain": sum(r["solution"] != q["solution"] for r, q in zip(side, plain)),
            "totals": tot,
            "per_problem": side,
        }
        if name != "plain":
            s["speedup_vs_plain"] = paired_ratio_ci([q["latency_s"] for q in plain], [r["latency_s"] for r in side])
            drafted = tot["spec_decode_num_draft_tokens_total"]
            s["draft_acceptance"] = tot["spec_decode_num_accepted_tokens_total"] / drafted if drafted else None
            verifs = tot["spec_decode_num_drafts_total"]  # 1 + accepted per verification: tokens per target pass
            s["tokens_per_verification"] = 1 + tot["spec_decode_num_accepted_tokens_total"] / verifs if verifs else None
            if drafted:  # problems resampled together with their tokens
                s["draft_acceptance_ci95"] = acceptance_ci(side)["ci95"]
        report["sides"][name] = s
        sp = s.get("speedup_vs_plain")
        spt = f"{sp['ratio']:.2f}x ({sp['ci95'][0]:.2f}-{sp['ci95'][1]:.2f})" if sp else "1 (reference)"
        acc = f"{s['draft_acceptance']:.2f}" if s.get("draft_acceptance") is not None else "-"
        tpv = f"{s['tokens_per_verification']:.2f}" if s.get("tokens_per_verification") is not None else "-"
        lines.append(
            f"{name:<16}{s['accuracy']:>9.3f}{s['latency_s_mean']:>11.1f}{s['tokens_per_s']:>10.2f}{spt:>30}"
            f"{acc:>10}{tpv:>10}{s['other_text_than_plain']:>6}/{len(side)}"
        )
    lines.append(
        "accepted: draft tokens the target accepted / drafted (the server's counters); tok/verif: tokens per target "
        "verification pass; other text: problems whose solution differs from the plain server's"
    )
    return finish(report, a.out, lines)


if __name__ == "__main__":
    main()
