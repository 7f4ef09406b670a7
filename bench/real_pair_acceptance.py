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
tokens per target forward pass, each with a 95% bootstrap interval over problems (a problem's steps are resampled
together: they are not independent). Timings on this CPU are not the point (see the GPU suite): acceptance is.

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


def is_identical(step) -> bool:
    """The kept step is the draft's own, token for token."""
    return step.draft is None or step.draft.text == step.text


def problem_counts(result) -> dict:
    """One problem's sums over its escalated steps (the unit a bootstrap interval resamples)."""
    steps = [rec for rec in result.records if rec.speculation]
    keys = ("proposed", "kept", "target_forwards", "target_written", "draft_speculated", "draft_accepted")
    counts = {k: sum(s.speculation.get(k, 0) for s in steps) for k in keys}
    counts.update(
        steps=len(steps),
        identical_steps=sum(is_identical(s) for s in steps),
        tokens_written=sum(s.n_tokens for s in steps),
    )
    return counts


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
    from arbitrage.evidence import paired_ratio_ci
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
    per_problem = [problem_counts(r) for r in done]
    steps = [rec for r in done for rec in r.records if rec.speculation]
    others = [s for s in steps if not is_identical(s)]
    tot = {k: sum(p[k] for p in per_problem) for k in per_problem[0]} if per_problem else {}

    def share(num: str, den: str) -> dict | None:
        """sum(num) / sum(den) over the problems, with a bootstrap interval resampling problems."""
        if not tot.get(den):
            return None
        c = paired_ratio_ci([p[num] for p in per_problem], [p[den] for p in per_problem])
        return {"value": c["ratio"], "ci95": c["ci95"], "n_problems": c["n"]}

    report = {
        "pair": "Qwen2.5-Coder-0.5B-Instruct (AWQ Q4_K_M) / Qwen2.5-Coder-1.5B-Instruct (Q4_K_M), GGUF dequantized to "
        "float32, in-process, greedy",
        "problems": len(done),
        "target_accuracy_here": correct / len(done) if done else None,
        "steps": len(steps),
        "gamma": a.gamma,
        "identical_steps_share": share("identical_steps", "steps"),
        "kept_tokens_median_other_steps": statistics.median(s.speculation["kept"] for s in others) if others else None,
        "kept_share_of_proposals": share("kept", "proposed"),
        "target_written_share": share("target_written", "tokens_written"),
        "in_step_acceptance": share("draft_accepted", "draft_speculated"),
        "tokens_per_target_forward": share("tokens_written", "target_forwards"),
        "totals": tot,
        "per_problem": [{"id": r.problem.id, **p} for r, p in zip(done, per_problem)],
        "load_s": round(load_s, 1),
        "run_s": round(time.perf_counter() - t0, 1),
    }

    def fmt(key: str, digits: int = 3) -> str:
        v = report[key]
        return "n/a" if v is None else f"{v['value']:.{digits}f} ({v['ci95'][0]:.{digits}f}-{v['ci95'][1]:.{digits}f})"

    lines = [
        f"real pair acceptance: {report['pair']}",
        f"{report['problems']} GSM8K problems, {report['steps']} steps, every step escalated, gamma {a.gamma}; "
        "95% bootstrap intervals over problems",
        f"draft steps token-identical to the target's: {fmt('identical_steps_share')}",
        f"tokens kept of the other proposals (median): {report['kept_tokens_median_other_steps']}",
        f"share of all proposal tokens kept: {fmt('kept_share_of_proposals')}",
        f"share of the target's tokens written by the target itself: {fmt('target_written_share')}",
        f"in-step draft tokens accepted: {fmt('in_step_acceptance')}",
        f"tokens per target forward pass: {fmt('tokens_per_target_forward', 2)}",
    ]
    return finish(report, a.out, lines)


if __name__ == "__main__":
    main()
