#!/usr/bin/env python3
"""One prepared device run: the in-process backend's fast path (static KV cache + compiled decode) on a GPU.

In one process, at most ~8 minutes on an H200:
(a) fast-path greedy equality on CUDA: random-weight Qwen2 models, the plain path and the fast path write the
    same steps through the engine (both models extending each other's contexts);
(b) ms/token for the Qwen2.5-1.5B and -7B shapes (random bf16 weights) at batch 1 and 32, plain and fast, next
    to the weight-bandwidth floor: parameter bytes / the device-to-device copy bandwidth measured here;
(c) bench/gpu_paper_scale.py's measurements on the fast path: engine overhead (wall / time in forward passes),
    target-only vs the router escalating a fixed 20% and 40% of the steps, prefill tokens per call;
(d) one JSON (default $OUT/gpu_suite.json), also printed.

    python bench/gpu_suite.py                  # on the GPU
    python bench/gpu_suite.py --tiny           # tiny shapes on the CPU: a check of the script (tests run it)

Goals (issue): batch-1 decode <= 2x the floor for 7B and <= 3x for 1.5B; draft:target per-step cost <= 0.35
through the engine; engine overhead <= 1.10.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import gpu_paper_scale as gps
from _common import finish

from arbitrage.backends.hf import HFGenerator
from arbitrage.engine import Engine, EngineConfig, Models
from arbitrage.policies import RouterPolicy, TargetOnly
from arbitrage.testing import EveryOtherRouter
from arbitrage.types import GenerationRequest


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device, nbytes: int) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted once each, as a weight read is one read:
    we report bytes read per second = size / time, i.e. a copy moves 2x the size)."""
    x = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    sync(device)
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    sync(device)
    dt = (time.perf_counter() - t0) / reps
    return 2 * nbytes / dt  # read + write per copy


class DecoderClock:
    """ForwardTimer's interface over a fast-path decoder's own timing (module hooks would be traced into the
    compiled step)."""

    def __init__(self, decoder):
        self.decoder = decoder
        decoder.timed = True

    @property
    def seconds(self) -> float:
        return self.decoder.seconds

    @property
    def calls(self) -> int:
        return self.decoder.calls

    def reset(self) -> None:
        self.decoder.seconds, self.decoder.calls = 0.0, 0


def generator(model, tok, name, fast: bool, slots: int, max_len: int):
    g = HFGenerator(model, tok, name=name, static_slots=slots if fast else 0, static_len=max_len, compile=fast)
    g.separator = "\x00never\x00"  # random weights: steps end at the token limit, exactly as asked
    g.eos_ids = set()
    return g


def ms_per_token(g, device, batch: int, prompt: int, tokens: int, vocab: int, reps: int = 2) -> float:
    """Decode time per token at this batch size (prefill subtracted), the best of `reps` runs."""
    gen = torch.Generator().manual_seed(batch)
    best = float("inf")
    for rep in range(reps + 1):  # the first is a warm-up (compilation, allocator)
        keys = [f"b{batch}-{rep}-{i}" for i in range(batch)]
        prompts = [
            "".join(f"<{t}>" for t in torch.randint(1, vocab, (prompt,), generator=gen).tolist()) for _ in range(batch)
        ]
        sync(device)
        t0 = time.perf_counter()
        g.generate([GenerationRequest(k, p, [], 1) for k, p in zip(keys, prompts)])
        sync(device)
        t_prefill = time.perf_counter() - t0
        for k in keys:
            g.release(k)
        sync(device)
        t0 = time.perf_counter()
        g.generate([GenerationRequest(k, p, [], tokens + 1) for k, p in zip(keys, prompts)])
        sync(device)
        total = time.perf_counter() - t0
        for k in keys:
            g.release(k)
        if rep:
            best = min(best, (total - t_prefill) / tokens * 1000)
    return best


def equality(device, dtype, tok, shape, steps: int) -> dict:
    """(a): the same problems through the engine, plain and fast, both models extending each other's steps."""
    out = {}
    models = {r: gps.build(shape, "lm", device, dtype, seed) for r, seed in (("draft", 11), ("target", 12))}
    probs = gps.problems(4, 16, tok.vocab_size, 5, "eq")
    for fast in (False, True):
        gens = {r: generator(m, tok, r, fast, 4, 512) for r, m in models.items()}
        for g in gens.values():  # a separator the random models do emit now and then: steps of varied length
            g.separator = "<7>"
        done = []
        Engine(
            RouterPolicy(0.5),
            Models(draft=gens["draft"], target=gens["target"], router=EveryOtherRouter()),
            EngineConfig(max_steps=steps, max_step_tokens=12, concurrency=4),
        ).run(probs, done.append)
        out["fast" if fast else "plain"] = {r.problem.id: [(s.author, s.token_ids) for s in r.steps] for r in done}
    same = out["fast"] == out["plain"]
    n_tokens = sum(len(ids or []) for steps in out["plain"].values() for _, ids in steps)
    return {"greedy_equal": same, "tokens_compared": n_tokens, "dtype": str(dtype)}


def main(argv=None) -> dict:
    with torch.no_grad():
        return _main(argv)


def _main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: checks the script")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_suite.json"))
    ap.add_argument("--decode-tokens", type=int, default=None, help="tokens timed per ms/token figure (64; tiny 8)")
    a = ap.parse_args(argv)
    tiny = a.tiny
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    if not tiny and device.type != "cuda":
        ap.error("the paper-scale shapes need a GPU; use --tiny for the CPU check")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    shapes = gps.TINY if tiny else gps.QWEN25
    tok = gps.SyntheticTokenizer(min(s["vocab_size"] for s in shapes.values()))
    n_tok = a.decode_tokens or (8 if tiny else 64)
    t_start = time.perf_counter()
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "tiny": tiny,
    }

    print("(a) fast-path greedy equality", file=sys.stderr, flush=True)
    report["equality"] = equality(device, dtype, tok, shapes["1.5b"], 4 if tiny else 6)

    print("(b) ms/token, plain and fast, against the weight-bandwidth floor", file=sys.stderr, flush=True)
    bw = copy_bandwidth(device, (64 if tiny else 2048) * 2**20)
    report["copy_bandwidth_GBps"] = bw / 1e9
    decode = {}
    for name in ("1.5b", "7b"):
        model = gps.build(shapes[name], "lm", device, dtype, 1)
        params = sum(p.numel() for p in model.parameters())
        floor_ms = params * torch.finfo(dtype).bits / 8 / (bw / 2) * 1000  # weights read once per token
        row = {"parameters": params, "floor_ms_per_token": floor_ms}
        for batch in (1, 32) if not tiny else (1, 2):
            for fast in (False, True):
                g = generator(model, tok, name, fast, batch, 128 + n_tok + 8)
                ms = ms_per_token(g, device, batch, 64 if not tiny else 8, n_tok, tok.vocab_size)
                row[f"{'fast' if fast else 'plain'}_b{batch}_ms_per_token"] = ms
                print(
                    f"  {name} batch {batch} {'fast' if fast else 'plain'}: {ms:.2f} ms/token (floor {floor_ms:.2f})",
                    file=sys.stderr,
                    flush=True,
                )
        row["fast_b1_over_floor"] = row["fast_b1_ms_per_token"] / floor_ms
        decode[name] = row
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["decode"] = decode

    print("(c) the paper-scale measurements on the fast path", file=sys.stderr, flush=True)
    steps, k, prompt = (3, 4, 8) if tiny else (8, 64, 128)
    batch_sizes = (1, 4) if tiny else (1, 32)
    models = {
        "draft": gps.build(shapes["1.5b"], "lm", device, dtype, 21),
        "target": gps.build(shapes["7b"], "lm", device, dtype, 22),
    }
    max_slots = max(batch_sizes)
    gens = {r: generator(m, tok, r, True, max_slots, prompt + steps * (k + 2) + 16) for r, m in models.items()}
    clocks = {r: DecoderClock(g.static) for r, g in gens.items()}
    warm = EngineConfig(max_steps=2, max_step_tokens=k, max_total_tokens=10**6, concurrency=1)
    wprobs = gps.problems(1, prompt, tok.vocab_size, 99, "warm")
    gps.run_one(RouterPolicy(0.5), gens, gps.FixedRateRouter({wprobs[0].id: {1}}), clocks, wprobs, warm, device)
    paper = {}
    for b in batch_sizes:
        n = 2 if (tiny and b == 1) else (8 if b == 1 else b)
        cfg = EngineConfig(max_steps=steps, max_step_tokens=k, max_total_tokens=10**6, concurrency=b)
        probs = gps.problems(n, prompt, tok.vocab_size, b, f"p{b}")
        row = {"problems": n, "target": gps.run_one(TargetOnly(), gens, None, clocks, probs, cfg, device)}
        for rate in (0.2, 0.4):
            router = gps.FixedRateRouter(gps.escalation_plan(probs, steps, rate, 0))
            r = gps.run_one(RouterPolicy(0.5), gens, router, clocks, probs, cfg, device)
            r["speedup_vs_target"] = row["target"]["latency_s_mean"] / r["latency_s_mean"]
            row[f"router@{rate:g}"] = r
        draft_only = gps.run_one(RouterPolicy(1.0), gens, gps.FixedRateRouter({}), clocks, probs, cfg, device)
        row["draft_only"] = draft_only
        row["draft_target_step_cost"] = draft_only["latency_s_mean"] / row["target"]["latency_s_mean"]
        paper[str(b)] = row
        print(
            f"  batch {b}: target {row['target']['latency_s_mean']:.3f} s/problem, overhead "
            f"{row['target']['engine_overhead']:.3f}; draft/target step cost {row['draft_target_step_cost']:.3f}",
            file=sys.stderr,
            flush=True,
        )
    report["paper_scale_fast"] = paper
    report["seconds"] = time.perf_counter() - t_start
    report["goals"] = {
        "decode_7b_b1_within_2x_floor": decode["7b"]["fast_b1_over_floor"] <= 2.0,
        "decode_1.5b_b1_within_3x_floor": decode["1.5b"]["fast_b1_over_floor"] <= 3.0,
        "draft_target_step_cost_le_0.35": paper["1"]["draft_target_step_cost"] <= 0.35,
        "engine_overhead_le_1.10": all(
            v["engine_overhead"] <= 1.10
            for row in paper.values()
            for v in row.values()
            if isinstance(v, dict) and "engine_overhead" in v
        ),
    }
    return finish(report, a.out)


if __name__ == "__main__":
    main()
