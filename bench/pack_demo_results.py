#!/usr/bin/env python3
"""Copy a finished `arbitrage demo` directory into bench/results/NAME: the report and figures as they are, each
sweep point's metrics.json, run.json and results.jsonl (gzipped), the probe routers; not the trained classifier
routers' weights nor the router data (both rebuilt by re-running the demo).

    python bench/pack_demo_results.py DEMO_OUT bench/results/NAME "the command that made DEMO_OUT"

To recompute the figures, unpack the points back (`POINTS/SWEEP/POINT/results.jsonl.gz` to
`OUT/SWEEP/POINT/results.jsonl`) and re-run the same command: finished points are not re-run."""

from __future__ import annotations

import gzip
import os
import shutil
import sys

TOP = (
    "demo.json",
    "report.txt",
    "sweep.json",
    "sweep.txt",
    "pareto.png",
    "accuracy_vs_escalation.png",
    "thresholds.json",
    "router-data-meta.json",
)
PROBES = ("router", "router-k2", "router-hidden")


def main(argv: list[str]) -> int:
    src, dest, command = argv
    os.makedirs(dest, exist_ok=True)
    for name in TOP:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), dest)
    for name in PROBES:
        if os.path.isdir(os.path.join(src, name)):
            shutil.copytree(os.path.join(src, name), os.path.join(dest, name), dirs_exist_ok=True)
    gen = os.path.join(src, "generate", "metrics.json")
    if os.path.isfile(gen):
        shutil.copy2(gen, os.path.join(dest, "generate-metrics.json"))
    n = 0
    for sweep in sorted(d for d in os.listdir(src) if d.startswith("sweep") and os.path.isdir(os.path.join(src, d))):
        for point in sorted(os.listdir(os.path.join(src, sweep))):
            p = os.path.join(src, sweep, point)
            if not os.path.isfile(os.path.join(p, "results.jsonl")):
                continue
            q = os.path.join(dest, "points", sweep, point)
            os.makedirs(q, exist_ok=True)
            for f in ("metrics.json", "run.json"):
                if os.path.isfile(os.path.join(p, f)):
                    shutil.copy2(os.path.join(p, f), q)
            with (
                open(os.path.join(p, "results.jsonl"), "rb") as fin,
                gzip.open(os.path.join(q, "results.jsonl.gz"), "wb", compresslevel=9) as fout,
            ):
                shutil.copyfileobj(fin, fout)
            n += 1
    with open(os.path.join(dest, "COMMAND"), "w") as f:
        f.write(command.rstrip() + "\n")
    print(f"{n} points packed into {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
