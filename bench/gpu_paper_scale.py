"""GPU benchmark at paper scale with random weights (issue 6, item 4): no download, real cost, fake text.

Draft and target are Qwen2.5-1.5B- and Qwen2.5-7B-shaped Qwen2 models with random weights (bf16 on the GPU);
the router is a Qwen2.5-1.5B-shaped 2-label token classifier (the paper's router size) whose forward pass is
run for its cost while the decision comes from a seeded plan that escalates a fixed share of the steps. A synthetic
tokenizer maps token i to the text "<i>" and back, so a step written by one model re-tokenizes to the same
ids for the other, no separator ever appears and no end-of-sequence is defined: every step is exactly
--step-tokens tokens (it stops at the step token limit) and every problem exactly --steps steps.

Measured for each batch size (problems in flight; 1 = the paper's batch size 1):
- engine overhead = wall time of the engine run / time inside the models' forward passes (forward hooks,
  CUDA synchronised at both ends of each pass); goal <= 1.10;
- latency per problem of target-only and of the router policy at fixed escalation rates (default 20%, 40%),
  and the speedup target / router;
- prefill tokens per call of each generator (Generation.n_prefill): with KV reuse a call computes only the tokens
  appended to the problem's context since that model's previous call (and the last token it sampled), never
  the whole context: `prefill_mean` against `appended_mean` and `context_mean`, and the share of calls with
  prefill <= appended (must be 1.0).

    python bench/gpu_paper_scale.py --out bench/results/gpu_paper_scale.json        # one H100, ~10 min
    python bench/gpu_paper_scale.py --tiny                                          # CPU, seconds (a check)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import re
import statistics
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import finish

from arbitrage.backends.hf import HFGenerator
from arbitrage.engine import Engine, EngineConfig, Models
from arbitrage.policies import RouterPolicy, TargetOnly
from arbitrage.timing import ForwardTimer
from arbitrage.types import Problem

QWEN25 = {  # from the published config.json files of Qwen/Qwen2.5-1.5B and Qwen/Qwen2.5-7B
    "1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}
TINY = {
    "1.5b": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=False,
    ),
}


class SyntheticTokenizer:
    """Token i <-> text "<i>"; any other character maps to its code point modulo the vocabulary (prompts and
    router tags). No end-of-sequence token, so steps end only at the step token limit."""

    pad_token_id, eos_token_id = 0, None
    _TOKEN = re.compile(r"<(\d+)>|(.)", re.S)

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [int(m[1]) if m[1] else ord(m[2]) % self.vocab_size for m in self._TOKEN.finditer(text)]

    def __call__(self, text: str, add_special_tokens: bool = False, **_):
        return {"input_ids": self.encode(text)}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(f"<{int(i)}>" for i in ids)

    def __len__(self) -> int:
        return self.vocab_size


class FixedRateRouter:
    """Escalates the steps a plan names ({problem id: step indices}); runs a real router's forward pass (if
    given) for its cost, then ignores its output."""

    name = "router"

    def __init__(self, plan: dict[str, set[int]], inner=None):
        self.plan, self.inner = plan, inner
        self.lane = getattr(inner, "lane", None)  # the inner router shares the generators' device

    def predict(self, requests):
        if self.inner is not None:
            self.inner.predict(requests)
        return [1.0 if len(r.steps) in self.plan.get(r.key, ()) else 0.0 for r in requests]

    def release(self, key: str) -> None:
        if self.inner is not None:
            self.inner.release(key)


def escalation_plan(probs: list[Problem], steps: int, rate: float, seed: int) -> dict[str, set[int]]:
    """Which steps to escalate so that the share over all problems is rate (to within one step): problem i
    gets floor(rate*S*(i+1)) - floor(rate*S*i) escalations, at seeded positions."""
    plan = {}
    for i, p in enumerate(probs):
        count = math.floor(rate * steps * (i + 1) + 1e-9) - math.floor(rate * steps * i + 1e-9)
        plan[p.id] = set(random.Random(f"{seed}:{p.id}").sample(range(steps), count))
    return plan


def build(shape: dict, kind: str, device: torch.device, dtype: torch.dtype, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForTokenClassification

    cfg = Qwen2Config(
        **shape,
        max_position_embeddings=32768,
        rope_theta=1e6,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=0,
        num_labels=2,
    )
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = (Qwen2ForCausalLM if kind == "lm" else Qwen2ForTokenClassification)(cfg)
    finally:
        torch.set_default_dtype(old)
    model = model.eval()
    if kind == "lm":
        model.generation_config.eos_token_id = None
    return model


def problems(n: int, prompt_tokens: int, vocab: int, seed: int, tag: str) -> list[Problem]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(1, vocab, (prompt_tokens,), generator=g).tolist()
        text = "".join(f"<{t}>" for t in ids)
        out.append(Problem(id=f"{tag}-{i}", question=text, prompt=text))
    return out


def prefill_report(stats) -> dict:
    """Per generator: prefill tokens per call against tokens appended to the context since the previous call."""
    last: dict[str, int] = {}
    prefill, appended, context, ok, later = [], [], [], 0, 0
    for s in stats:
        ctx = s.n_prefill + s.n_reused
        if s.key in last:
            new = ctx - last[s.key]
            later += 1
            prefill.append(s.n_prefill)
            appended.append(new)
            context.append(ctx)
            ok += s.n_prefill <= max(new, 1)
        last[s.key] = ctx
    mean = lambda xs: statistics.fmean(xs) if xs else 0.0
    return {
        "calls_after_first": later,
        "prefill_mean": mean(prefill),
        "appended_mean": mean(appended),
        "context_mean": mean(context),
        "prefill_le_appended": ok / later if later else 1.0,
    }


class Recording:
    """A generator wrapped to keep (key, n_prefill, n_reused) of every request it answers."""

    def __init__(self, gen):
        self.gen, self.name, self.separator, self.lane = gen, gen.name, gen.separator, gen.lane
        self.stats: list[SimpleNamespace] = []

    def generate(self, requests):
        out = self.gen.generate(requests)
        self.stats += [
            SimpleNamespace(key=r.key, n_prefill=g.n_prefill, n_reused=g.n_reused) for r, g in zip(requests, out)
        ]
        return out

    def release(self, key):
        self.gen.release(key)


def run_one(policy, gens: dict, router, clocks: dict, probs, cfg: EngineConfig, device) -> dict:
    gens = {role: Recording(g) for role, g in gens.items()}
    for c in clocks.values():
        c.reset()
    results = []
    models = Models(draft=gens["draft"], target=gens["target"], router=router)
    engine = Engine(policy, models, cfg)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    engine.run(probs, results.append)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    forward = sum(c.seconds for c in clocks.values())
    steps = sum(len(r.steps) for r in results)
    escalated = sum(r.counts["escalated_steps"] for r in results)
    return {
        "problems": len(results),
        "steps": steps,
        "escalation_rate": escalated / steps if steps else 0.0,
        "latency_s_mean": statistics.fmean(r.latency_s for r in results),
        "wall_s": wall,
        "forward_s": forward,
        "engine_overhead": wall / forward if forward else None,
        "forward_s_by_model": {k: c.seconds for k, c in clocks.items()},
        "target_calls": sum(r.counts["target_calls"] for r in results),
        "prefill": {role: prefill_report(g.stats) for role, g in gens.items()},
    }


def main(argv=None) -> dict:
    with torch.no_grad():  # not a global switch: tests call main() in-process
        return _main(argv)


def _main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: checks the script in seconds")
    ap.add_argument("--batch-sizes", default=None, help="problems in flight (default 1,32; tiny: 1,4)")
    ap.add_argument("--problems-b1", type=int, default=None, help="problems at batch size 1 (default 8; tiny 2)")
    ap.add_argument("--steps", type=int, default=None, help="steps per problem (default 8; tiny 3)")
    ap.add_argument("--step-tokens", type=int, default=None, help="tokens per step (default 64; tiny 4)")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="prompt length (default 128; tiny 8)")
    ap.add_argument("--rates", default="0.2,0.4", help="router escalation rates")
    ap.add_argument("--no-router-forward", action="store_true", help="a free router (no 1.5B forward pass)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    tiny = a.tiny
    device = torch.device(a.device or ("cpu" if tiny or not torch.cuda.is_available() else "cuda"))
    if not tiny and device.type != "cuda":
        ap.error("the paper-scale shapes need a GPU; use --tiny for the CPU check")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    shapes = TINY if tiny else QWEN25
    batch_sizes = [int(x) for x in (a.batch_sizes or ("1,4" if tiny else "1,32")).split(",")]
    n_b1 = a.problems_b1 or (2 if tiny else 8)
    steps, k, prompt = (
        a.steps or (3 if tiny else 8),
        a.step_tokens or (4 if tiny else 64),
        a.prompt_tokens or (8 if tiny else 128),
    )
    rates = [float(x) for x in a.rates.split(",")]

    t_load = time.perf_counter()
    tok = SyntheticTokenizer(min(s["vocab_size"] for s in shapes.values()))
    gens = {
        "draft": HFGenerator(build(shapes["1.5b"], "lm", device, dtype, a.seed + 1), tok, name="draft"),
        "target": HFGenerator(build(shapes["7b"], "lm", device, dtype, a.seed + 2), tok, name="target"),
    }
    clocks = {role: ForwardTimer(g.model) for role, g in gens.items()}
    inner = None
    if not a.no_router_forward:
        from arbitrage.scoring.hf import HFRouter, _CachedScorer, _token_cls_head

        rmodel = build(shapes["1.5b"], "cls", device, dtype, a.seed + 3)
        clocks["router"] = ForwardTimer(rmodel)
        inner = HFRouter(_CachedScorer(rmodel, tok, _token_cls_head, "router"))
    load_s = time.perf_counter() - t_load

    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "tiny": tiny,
        "shapes": {
            "draft": shapes["1.5b"],
            "target": shapes["7b"],
            "router": None if inner is None else shapes["1.5b"],
        },
        "steps_per_problem": steps,
        "tokens_per_step": k,
        "prompt_tokens": prompt,
        "rates": rates,
        "load_s": load_s,
        "batch": {},
    }
    warm = EngineConfig(max_steps=2, max_step_tokens=k, max_total_tokens=10**6, concurrency=1)
    wprobs = problems(1, prompt, tok.vocab_size, a.seed + 99, "warmup")  # kernels, allocator, caches
    run_one(RouterPolicy(0.5), gens, FixedRateRouter({wprobs[0].id: {1}}, inner), clocks, wprobs, warm, device)
    for b in batch_sizes:
        n = n_b1 if b == 1 else b
        cfg = EngineConfig(max_steps=steps, max_step_tokens=k, max_total_tokens=10**6, concurrency=b)
        probs = problems(n, prompt, tok.vocab_size, a.seed + b, f"b{b}")
        row = {"problems": n, "target": run_one(TargetOnly(), gens, None, clocks, probs, cfg, device)}
        for rate in rates:
            router = FixedRateRouter(escalation_plan(probs, steps, rate, a.seed), inner)
            r = run_one(RouterPolicy(0.5), gens, router, clocks, probs, cfg, device)
            r["speedup_vs_target"] = row["target"]["latency_s_mean"] / r["latency_s_mean"]
            row[f"router@{rate:g}"] = r
        report["batch"][str(b)] = row
        print(
            f"batch {b}: "
            + ", ".join(
                f"{name}: {v['latency_s_mean']:.3f} s/problem, overhead {v['engine_overhead']:.3f}"
                for name, v in row.items()
                if isinstance(v, dict)
            ),
            file=sys.stderr,
            flush=True,
        )
    return finish(report, a.out)


if __name__ == "__main__":
    main()
