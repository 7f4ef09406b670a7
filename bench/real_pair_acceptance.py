#!/usr/bin/env python3
"""How much of the draft's work an escalation keeps on a real pair: Qwen2.5-Coder-0.5B / 1.5B-Instruct (the GGUF
files of the real-LM benchmark, `bench/real_lm/fetch_models.py`, loaded in-process through transformers' GGUF
support and dequantized to float32), same tokenizer, greedy, on GSM8K test problems.

Every step is escalated (policy `confidence` at tau = 0: a step's mean log-prob is below 0 unless the draft was
certain of every token), so at every step the draft writes its proposal, the target verifies it in one pass and
writes the rest of its own step with the draft proposing `--gamma` tokens at a time (backends/speculative.py).
Per step the records say how many proposal tokens the target kept, how many target forward passes it took and
how many in-step draft tokens it accepted. Reported: the share of draft steps token-identical to the target's,
the tokens kept of the others (median), the share of the target's tokens it wrote itself, in-step acceptance and
tokens per target forward pass. Timings on this CPU are not the point (see the GPU suite): acceptance is.

    python bench/real_lm/fetch_models.py                  # once: ~1.6 GB into ~/.cache/arbitrage/gguf
    python bench/real_pair_acceptance.py --n 20           # writes bench/results/real_pair_acceptance.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import finish

CACHE = Path(os.environ.get("ARBITRAGE_GGUF_CACHE", "~/.cache/arbitrage/gguf")).expanduser()
FILES = {"draft": "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf", "target": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"}


def load(role: str, path: Path, threads: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from arbitrage.backends.hf import HFGenerator

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    return HFGenerator(model, tok, name=role, separator="\n\n")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="GSM8K test problems (default: %(default)s)")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--max-step-tokens", type=int, default=96)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "real_pair_acceptance.json"))
    a = ap.parse_args(argv)

    from arbitrage.data import load_problems
    from arbitrage.engine import Engine, EngineConfig, Models
    from arbitrage.factory import link_speculation
    from arbitrage.grading import Grader
    from arbitrage.policies import make_policy

    paths = {r: CACHE / f for r, f in FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run bench/real_lm/fetch_models.py first")
    t0 = time.perf_counter()
    models = Models(draft=load("draft", paths["draft"], a.threads), target=load("target", paths["target"], a.threads))
    link_speculation(models)
    if models.target.speculator is None:
        raise SystemExit("the two GGUF tokenizers differ: no in-step speculation is possible")
    load_s = time.perf_counter() - t0
    problems = load_problems("gsm8k", limit=a.n, offset=a.offset, template="qwen-math-cot")
    cfg = EngineConfig(
        max_steps=a.max_steps,
        max_step_tokens=a.max_step_tokens,
        max_total_tokens=a.max_steps * a.max_step_tokens,
        concurrency=1,
        gamma=a.gamma,
    )
    done = []
    engine = Engine(make_policy("confidence", 0.0), models, cfg)
    t0 = time.perf_counter()
    for i, p in enumerate(problems):  # one at a time, with progress: a problem takes about a minute here
        engine.run([p], done.append)
        print(f"{i + 1}/{len(problems)} problems ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    with Grader() as grader:
        correct = sum(bool(grader.grade(r.solution, r.problem.gold).correct) for r in done)
    steps = [rec for r in done for rec in r.records if rec.speculation]
    identical = [s for s in steps if s.draft is None or s.draft.text == s.text]  # the kept step is the draft's
    others = [s for s in steps if s not in identical]
    tot = {k: sum(s.speculation[k] for s in steps) for k in steps[0].speculation} if steps else {}
    written = sum(s.n_tokens for s in steps)
    report = {
        "pair": "Qwen2.5-Coder-0.5B-Instruct (AWQ Q4_K_M) / Qwen2.5-Coder-1.5B-Instruct (Q4_K_M), GGUF dequantized to "
        "float32, in-process, greedy",
        "problems": len(done),
        "target_accuracy_here": correct / len(done) if done else None,
        "steps": len(steps),
        "gamma": a.gamma,
        "identical_steps_share": len(identical) / len(steps) if steps else None,
        "kept_tokens_median_other_steps": statistics.median(s.speculation["kept"] for s in others) if others else None,
        "kept_share_of_proposals": tot.get("kept", 0) / tot["proposed"] if tot.get("proposed") else None,
        "target_written_share": tot.get("target_written", 0) / written if written else None,
        "in_step_acceptance": tot["draft_accepted"] / tot["draft_speculated"] if tot.get("draft_speculated") else None,
        "tokens_per_target_forward": written / tot["target_forwards"] if tot.get("target_forwards") else None,
        "totals": tot,
        "tokens_written": written,
        "load_s": round(load_s, 1),
        "run_s": round(time.perf_counter() - t0, 1),
    }
    lines = [
        f"real pair acceptance: {report['pair']}",
        f"{report['problems']} GSM8K problems, {report['steps']} steps, every step escalated, gamma {a.gamma}",
        f"draft steps token-identical to the target's: {report['identical_steps_share']:.3f}",
        f"tokens kept of the other proposals (median): {report['kept_tokens_median_other_steps']}",
        f"share of all proposal tokens kept: {report['kept_share_of_proposals']:.3f}",
        f"share of the target's tokens written by the target itself: {report['target_written_share']:.3f}",
        f"in-step draft tokens accepted: {report['in_step_acceptance']:.3f}",
        f"tokens per target forward pass: {report['tokens_per_target_forward']:.2f}",
    ]
    return finish(report, a.out, lines)


if __name__ == "__main__":
    main()
