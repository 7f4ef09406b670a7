#!/usr/bin/env python3
"""Markdown table of a sweep (OUT/sweep.json written by `arbitrage sweep`), with the per-model time split and
the tokens per second each model delivered, for bench/results/real_lm_cpu/results.md.

    python bench/real_lm/summarize.py SWEEP_DIR --out bench/results/real_lm_cpu [--router-eval FILE]
"""

from __future__ import annotations

import argparse
import json
import os

from arbitrage.evidence import paired_ratio_ci, sign_test_p
from arbitrage.results import read_records
from arbitrage.sweep_report import label as point_key


def label(m: dict) -> str:
    return m["policy"] if m.get("threshold") is None else f"{m['policy']} τ={m['threshold']:g}"


def rate(tokens: float, seconds: float) -> str:
    return f"{tokens / seconds:.1f}" if seconds > 0 and tokens > 0 else "–"


def table(summary: dict) -> str:
    front = {f["label"] for fs in summary["frontiers"].values() for f in fs}
    rows = [
        "| point | n | accuracy (± se) | escalation | latency mean / p50 (s) "
        "| draft / target / PRM / router s per problem | target calls | draft tok/s | target tok/s | frontier |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in summary["points"]:
        n = m["n"] or 1
        draft_tok = m["draft_tokens_accepted"] + m["draft_tokens_discarded"]
        split = " / ".join(f"{m.get(k + '_s', 0.0) / n:.1f}" for k in ("draft", "target", "prm", "router"))
        rows.append(
            f"| {label(m)} | {m['n']} | {m['accuracy']:.3f} (± {m['accuracy_se']:.3f}) "
            f"| {m['escalation_rate']:.2f} | {m['latency_s_mean']:.1f} / {m['latency_s_p50']:.1f} | {split} "
            f"| {m['target_calls']} | {rate(draft_tok, m.get('draft_s', 0))} "
            f"| {rate(m['target_tokens'], m.get('target_s', 0))} | {'yes' if point_key(m) in front else ''} |"
        )
    return "\n".join(rows)


def comparisons(summary: dict) -> str:
    out = []
    for c in summary["comparisons"]:
        h = c.get("headline")
        if c["status"] == "matched" and h is not None:
            out.append(
                f"- router vs {c['b']} at accuracy {h['accuracy']:.3f}: **{h['speedup']:.2f}x** "
                f"({h['latency_' + c['b']]:.1f} s vs {h['latency_router']:.1f} s per problem); {c['note']}"
            )
        else:
            out.append(f"- router vs {c['b']}: {c['note']}")
    return "\n".join(out) if out else "- (no router points)"


def point_dir(point: dict, sweep_dir: str) -> str | None:
    """The point's run directory: where the sweep recorded it, else under SWEEP_DIR (a moved sweep)."""
    for d in (point.get("dir") or "", os.path.join(sweep_dir, os.path.basename(point.get("dir") or ""))):
        if d and os.path.isfile(os.path.join(d, "results.jsonl")):
            return d
    return None


def records(run_dir: str) -> dict:
    """problem id -> (correct, latency_s) from the point's results.jsonl."""
    return {r.id: (bool(r.correct), float(r.latency_s)) for r in read_records(run_dir)}


def paired(summary: dict, sweep_dir: str, reference: str = "target", resamples: int = 4000, seed: int = 0) -> str:
    """Every point against the reference policy on the same problems: accuracy difference with the discordant
    problems and the exact sign-test p, and the latency ratio (reference / point) with a bootstrap 95% interval
    over problems. Small n: this says which differences the run can and cannot tell apart."""
    dirs = [point_dir(m, sweep_dir) for m in summary["points"]]
    ref = next((i for i, m in enumerate(summary["points"]) if m["policy"] == reference and dirs[i]), None)
    if ref is None:
        return f"(no {reference} point with its records)"
    base = records(dirs[ref])
    rows = [
        f"| point | n | accuracy − {reference} | right only here / only {reference} | sign-test p "
        f"| latency ratio {reference} / point (95% CI) |",
        "|---|---|---|---|---|---|",
    ]
    for i, m in enumerate(summary["points"]):
        if i == ref or dirs[i] is None:
            continue
        mine = records(dirs[i])
        ids = sorted(set(mine) & set(base))
        if not ids:
            continue
        wins = sum(mine[i][0] and not base[i][0] for i in ids)
        losses = sum(base[i][0] and not mine[i][0] for i in ids)
        r = paired_ratio_ci([base[i][1] for i in ids], [mine[i][1] for i in ids], n_boot=resamples, seed=seed)
        (lo, hi) = r["ci95"]
        rows.append(
            f"| {label(m)} | {len(ids)} | {(wins - losses) / len(ids):+.3f} | {wins} / {losses} "
            f"| {sign_test_p(wins, losses):.2f} | {r['ratio']:.2f}x ({lo:.2f}–{hi:.2f}) |"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--router-eval", help="router eval JSON to quote")
    ap.add_argument("--thresholds", help="`arbitrage router thresholds` JSON to quote")
    ap.add_argument(
        "--conditions",
        default=os.environ.get("CONDITIONS", "a 2-core CPU"),
        help="the machine and its load, for the header",
    )
    args = ap.parse_args(argv)
    with open(os.path.join(args.sweep_dir, "sweep.json")) as f:
        summary = json.load(f)
    parts = [
        "# Real LMs on CPU (llama.cpp): sweep results",
        "",
        "Draft Qwen2.5-Coder-0.5B-Instruct (AWQ Q4_K_M), target Qwen2.5-Coder-1.5B-Instruct (Q4_K_M), both "
        f"served by llama-server ({os.environ.get('THREADS', '1')} thread(s) each) on {args.conditions}; "
        "PRM = the target as a yes/no judge; router = probe on the draft's log-probs/entropies. "
        "Batch size 1. Produced by bench/real_lm/run.sh; per-problem records in points/.",
        "",
        table(summary),
        "",
        "Latency at matched accuracy (speedup = other's latency / router's):",
        "",
        comparisons(summary),
        "",
        "Paired against target-only on the same problems:",
        "",
        paired(summary, args.sweep_dir),
    ]
    if summary.get("notes"):
        parts += ["", *[f"Note: {n}" for n in summary["notes"]]]
    if args.router_eval and os.path.exists(args.router_eval):
        with open(args.router_eval) as f:
            ev = json.load(f)
        parts += ["", "Router (probe) on held-out `generate` steps:", "", "```", json.dumps(ev, indent=1)[:3000], "```"]
    if args.thresholds and os.path.exists(args.thresholds):
        with open(args.thresholds) as f:
            th = json.load(f)
        parts += [
            "",
            f"Thresholds (`arbitrage router thresholds`, {th['n_steps']} `generate` steps of "
            f"{th['n_problems']} problems; the oracle escalates {th['oracle_rate']:.1%}):",
            "",
            "| policy | asked rate | tau | rate on those steps |",
            "|---|---|---|---|",
            *[
                f"| {pol} | {p['rate']:.2f} | {p['tau']:g} | {p['achieved']:.2f} |"
                for pol in ("router", "rsd")
                for p in th.get(pol, [])
            ],
        ]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.md")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
