#!/usr/bin/env bash
# Build llama.cpp's server for the real-LM CPU benchmark, outside the repo (default ~/.cache/arbitrage).
#
#   bench/real_lm/build_servers.sh            # llama-server (C++) from the llama.cpp sources in the llama-cpp-python sdist
#   bench/real_lm/build_servers.sh --python   # also the llama-cpp-python[server] venv (python -m llama_cpp.server)
#
# Both come from PyPI (the only network this benchmark assumes). Built for AVX2 rather than -march=native: on CPUs
# that report AMX inside a VM that has not granted the tile state, a native build dies with SIGILL at start. The C++ server is the one the benchmark uses:
# its /completion endpoint reports why it stopped (stop_type eos|word|limit) and returns top-k log-probs
# computed in C++ (partial sort); llama-cpp-python's server sorts the whole 152k vocabulary in Python for every
# token whenever log-probs are requested (see README.md here). Idempotent: an existing binary is kept.
set -euo pipefail
CACHE=${ARBITRAGE_CACHE:-$HOME/.cache/arbitrage}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}   # the llama.cpp sources vendored in this sdist are what we build
JOBS=${JOBS:-2}
mkdir -p "$CACHE"
SRC="$CACHE/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
BIN="$SRC/build/bin/llama-server"

if [[ ! -x "$BIN" ]]; then
  if [[ ! -d "$SRC" ]]; then
    pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE/sdist"
    mkdir -p "$CACHE/src"
    tar xzf "$CACHE/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE/src" "llama_cpp_python-$VERSION/vendor/llama.cpp"
  fi
  (cd "$SRC" &&
   nice -n 10 cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
     -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
     -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON &&
   nice -n 10 cmake --build build --target llama-server -j "$JOBS")
fi
ln -sf "$BIN" "$CACHE/llama-server"
echo "llama-server: $CACHE/llama-server -> $BIN"

if [[ "${1:-}" == "--python" ]]; then
  VENV="$CACHE/llamacpp-venv"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  if ! "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    CMAKE_BUILD_PARALLEL_LEVEL=$JOBS nice -n 10 "$VENV/bin/pip" install "llama-cpp-python[server]==$VERSION"
  fi
  echo "llama-cpp-python server: $VENV/bin/python -m llama_cpp.server"
fi
