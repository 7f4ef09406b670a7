#!/usr/bin/env bash
# Start / stop the two llama.cpp servers of the real-LM CPU benchmark on 127.0.0.1.
#
#   bench/real_lm/serve.sh start     # draft (Qwen2.5-Coder-0.5B-Instruct) on :$DRAFT_PORT, target (1.5B) on :$TARGET_PORT
#   bench/real_lm/serve.sh stop      # stops exactly the PIDs this script started (pid files)
#   bench/real_lm/serve.sh status
#
# The target server also serves the judge PRM (--prm judge:http://127.0.0.1:$TARGET_PORT). Both use $THREADS
# threads (default 1) and keep prompt caches, so each request computes only the tokens after the longest
# prefix a slot already holds. The target gets two slots: one ends up holding the generation context, the
# other the judging prompt, so the two kinds of request do not evict each other's prefix.
# SERVER=python uses llama-cpp-python's server instead (slow log-probs, no stop_type: see README.md).
set -euo pipefail
CACHE=${ARBITRAGE_CACHE:-$HOME/.cache/arbitrage}
GGUF=${ARBITRAGE_GGUF_CACHE:-$CACHE/gguf}
RUN=$CACHE/run
DRAFT_PORT=${DRAFT_PORT:-8091}
TARGET_PORT=${TARGET_PORT:-8092}
THREADS=${THREADS:-1}   # at most 2; 1 measured faster on the shared, oversubscribed 2-core machine (README)
CTX=${CTX:-4096}
DRAFT_SLOTS=${DRAFT_SLOTS:-1}   # parallel slots per server (bench/engine_parallel.py uses 8: one per problem in flight)
TARGET_SLOTS=${TARGET_SLOTS:-2}
SERVER=${SERVER:-cpp}
DRAFT_GGUF=$GGUF/qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf
TARGET_GGUF=$GGUF/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
mkdir -p "$RUN"

start_one() {  # role model port slots
  local role=$1 model=$2 port=$3 slots=$4 pidf="$RUN/$1.pid"
  if [[ -f "$pidf" ]] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
    echo "$role server already running (pid $(cat "$pidf"), port $port)"; return
  fi
  [[ -f "$model" ]] || { echo "missing $model: run bench/real_lm/fetch_models.py" >&2; exit 1; }
  if [[ "$SERVER" == cpp ]]; then
    "$CACHE/llama-server" -m "$model" --host 127.0.0.1 --port "$port" -t "$THREADS" -tb "$THREADS" \
      -c $((CTX * slots)) -np "$slots" --alias "$role" --no-webui --cache-prompt --cache-ram 2048 --metrics \
      > "$RUN/$role.log" 2>&1 &
  else
    "$CACHE/llamacpp-venv/bin/python" -m llama_cpp.server --model "$model" --host 127.0.0.1 --port "$port" \
      --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx "$CTX" --model_alias "$role" \
      --logits_all true > "$RUN/$role.log" 2>&1 &
  fi
  echo $! > "$pidf"
  echo "$role server: pid $(cat "$pidf"), http://127.0.0.1:$port/v1, log $RUN/$role.log"
}

wait_ready() {  # port
  for _ in $(seq 1 180); do
    if curl -sf "http://127.0.0.1:$1/v1/models" > /dev/null; then return 0; fi
    sleep 1
  done
  echo "server on port $1 did not come up; see $RUN/*.log" >&2; exit 1
}

stop_one() {
  local pidf="$RUN/$1.pid"
  if [[ -f "$pidf" ]]; then
    local pid; pid=$(cat "$pidf")
    if kill -0 "$pid" 2>/dev/null; then kill "$pid"; echo "stopped $1 server (pid $pid)"; fi
    rm -f "$pidf"
  fi
}

case "${1:-}" in
  start)
    start_one draft "$DRAFT_GGUF" "$DRAFT_PORT" "$DRAFT_SLOTS"
    start_one target "$TARGET_GGUF" "$TARGET_PORT" "$TARGET_SLOTS"
    wait_ready "$DRAFT_PORT"; wait_ready "$TARGET_PORT"; echo "servers ready" ;;
  stop) stop_one draft; stop_one target ;;
  status)
    for r in draft target; do
      if [[ -f "$RUN/$r.pid" ]] && kill -0 "$(cat "$RUN/$r.pid")" 2>/dev/null; then echo "$r: running (pid $(cat "$RUN/$r.pid"))"
      else echo "$r: stopped"; fi
    done ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
