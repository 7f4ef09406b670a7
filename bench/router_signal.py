"""Held-out quality of trained routers against shuffled-label controls, on `generate` results.

    python bench/router_signal.py RESULTS.jsonl[.gz] --out DIR [--base MODEL] [--controls 5]

Builds router data (split by problem, balanced training split), trains a probe router and `--controls` probes on
shuffled labels; with --base also a classifier router and one shuffled-label classifier. Prints one line per
router (Spearman with A, ROC-AUC, balanced accuracy, oracle agreement at tau 0.5, training seconds) and writes
DIR/summary.json. Default data: tests/fixtures/router_generate.jsonl.gz (see tests/support/router_signal_fixture.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from arbitrage.router_training import build_data, evaluate_router, train_router

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "router_generate.jsonl.gz"
KEYS = ("spearman", "roc_auc", "balanced_accuracy", "oracle_agreement", "escalation_rate")


def _row(name: str, router_dir: str, m: dict) -> dict:
    meta = json.loads((Path(router_dir) / "arbitrage_router.json").read_text())
    row = {
        "router": name,
        **{k: round(m[k], 4) for k in KEYS},
        "train_seconds": meta["train_seconds"],
        "ms_per_step": m["ms_per_step"],
    }
    print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="*", default=[str(FIXTURE)])
    p.add_argument("--out", required=True)
    p.add_argument("--base", help="classifier base model (local path or id); without it only probes are trained")
    p.add_argument("--controls", type=int, default=5, help="shuffled-label probes (default 5)")
    p.add_argument("--val-fraction", type=float, default=0.3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=float, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    out = Path(args.out)
    data = str(out / "data")
    counts = build_data(args.results, data, val_fraction=args.val_fraction, seed=0)
    print(f"data: {counts}", flush=True)
    quiet = {"log": lambda s: None}
    rows = []
    r = train_router(data, str(out / "probe"), kind="probe", **quiet)
    rows.append(_row("probe", r, evaluate_router(r, data)))
    for s in range(args.controls):
        r = train_router(data, str(out / f"probe_shuffled{s}"), kind="probe", seed=s, shuffle_labels=True, **quiet)
        rows.append(_row(f"probe, shuffled labels (seed {s})", r, evaluate_router(r, data)))
    if args.base:
        hyper = dict(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, device=args.device)
        for name, shuffled in (("classifier", False), ("classifier, shuffled labels", True)):
            d = str(out / name.replace(", ", "_").replace(" ", "_"))
            r = train_router(
                data, d, kind="classifier", base=args.base, shuffle_labels=shuffled, log=lambda s: None, **hyper
            )
            rows.append(_row(name, r, evaluate_router(r, data, device=args.device)))
    ctl = [x["spearman"] for x in rows if x["router"].startswith("probe, shuffled")]
    summary = {
        "results": [os.path.abspath(x) for x in args.results],
        "counts": counts,
        "routers": rows,
        "probe_control_spearman_mean": round(statistics.fmean(ctl), 4) if ctl else None,
        "probe_control_spearman_max": max(ctl) if ctl else None,
        "argv": sys.argv,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
