#!/usr/bin/env python3
"""Markdown table of a sweep (OUT/sweep.json written by `arbitrage sweep`), with the per-model time split and
the tokens per second each model delivered, for bench/results/real_lm_cpu/results.md.

    python bench/real_lm/summarize.py SWEEP_DIR --out bench/results/real_lm_cpu [--router-eval FILE]
"""

from __future__ import annotations

import argparse
import json
import os


def label(m: dict) -> str:
    return m["policy"] if m.get("threshold") is None else f"{m['policy']} τ={m['threshold']:g}"


def rate(tokens: float, seconds: float) -> str:
    return f"{tokens / seconds:.1f}" if seconds > 0 and tokens > 0 else "–"


def table(summary: dict) -> str:
    front = {f["label"] for fs in summary["frontiers"].values() for f in fs}
    rows = ["| point | n | accuracy (± se) | escalation | latency mean / p50 (s) | draft / target / PRM / router s per problem "
            "| target calls | draft tok/s | target tok/s | frontier |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for m in summary["points"]:
        n = m["n"] or 1
        draft_tok = m["draft_tokens_accepted"] + m["draft_tokens_discarded"]
        split = " / ".join(f"{m.get(k + '_s', 0.0) / n:.1f}" for k in ("draft", "target", "prm", "router"))
        lab = m["policy"] if m.get("threshold") is None else f"{m['policy']}@{m['threshold']:g}"
        rows.append(f"| {label(m)} | {m['n']} | {m['accuracy']:.3f} (± {m['accuracy_se']:.3f}) "
                    f"| {m['escalation_rate']:.2f} | {m['latency_s_mean']:.1f} / {m['latency_s_p50']:.1f} | {split} "
                    f"| {m['target_calls']} | {rate(draft_tok, m.get('draft_s', 0))} "
                    f"| {rate(m['target_tokens'], m.get('target_s', 0))} | {'yes' if lab in front else ''} |")
    return "\n".join(rows)


def comparisons(summary: dict) -> str:
    out = []
    for c in summary["comparisons"]:
        h = c.get("headline")
        if c["status"] == "matched" and h is not None:
            out.append(f"- router vs {c['b']} at accuracy {h['accuracy']:.3f}: **{h['speedup']:.2f}x** "
                       f"({h['latency_' + c['b']]:.1f} s vs {h['latency_router']:.1f} s per problem); {c['note']}")
        else:
            out.append(f"- router vs {c['b']}: {c['note']}")
    return "\n".join(out) if out else "- (no router points)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--router-eval", help="router eval JSON to quote")
    args = ap.parse_args(argv)
    with open(os.path.join(args.sweep_dir, "sweep.json")) as f:
        summary = json.load(f)
    parts = ["# Real LMs on CPU (llama.cpp): sweep results", "",
             "Draft Qwen2.5-Coder-0.5B-Instruct (AWQ Q4_K_M), target Qwen2.5-Coder-1.5B-Instruct (Q4_K_M), both "
             f"served by llama-server ({os.environ.get('THREADS', '1')} thread(s) each) on a 2-core CPU shared with "
             "other jobs; PRM = the target as a yes/no judge; router = probe on the draft's log-probs/entropies. "
             "Batch size 1. Produced by bench/real_lm/run.sh; per-problem records in points/.", "",
             table(summary), "", "Latency at matched accuracy (speedup = other's latency / router's):", "",
             comparisons(summary)]
    if summary.get("notes"):
        parts += ["", *[f"Note: {n}" for n in summary["notes"]]]
    if args.router_eval and os.path.exists(args.router_eval):
        with open(args.router_eval) as f:
            ev = json.load(f)
        parts += ["", "Router (probe) on held-out `generate` steps:", "", "```", json.dumps(ev, indent=1)[:3000], "```"]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.md")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
