#!/usr/bin/env python3
"""The paper's router ablations (Arbitrage, Tables 1-3) on one set of testbed `generate` data, side by side with
the paper's figures.

Every variant is trained by the router pipeline (`arbitrage router build-data` / `train`) on the same generate
run and judged on the same held-out problems:

- Table 1, router heads: 2 classes, 4 and 10 classes by quantiles of the advantage, 4-class ordinal;
- Table 2, history annotation: the author tags ("Model 0: " / "Model 1: ") on the earlier steps, or none;
- Table 3, balancing: the training split downsampled to equal classes, or its natural mix.

Both router kinds run: the paper's classifier (fine-tuned from the testbed's draft LM here, as the paper
fine-tunes a 1.5B PRM) and the probe (draft features, no text: Table 2 does not apply to it). Figures: Spearman
(y_hat, A) with a 95% bootstrap interval over held-out problems, and the 2-class-equivalent accuracies (escalate
iff y_hat > 0.5, against A > 0) per class, as the paper reports them.

    python bench/router_ablations.py --generate DIR [--out bench/results/router_ablations]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

PAPER = {  # Arbitrage (arXiv 2512.05033): Spearman, accuracy on class 0 (keep) / class 1 (escalate), in %
    "2-class": {"spearman": 0.1508, "acc_keep": 70.04, "acc_escalate": 72.96},
    "4-class": {"spearman": 0.1417, "acc_keep": 64.24, "acc_escalate": 80.53},
    "10-class": {"spearman": 0.1337, "acc_keep": 71.29, "acc_escalate": 71.77},
    "4-class ordinal": {"spearman": 0.1355, "acc_keep": 62.00, "acc_escalate": 79.77},
    "no annotation": {"spearman": 0.1305},
    "annotated": {"spearman": 0.1508},
    "not balanced": {"spearman": 0.1587, "acc_escalate": 49.62},
    "balanced": {"spearman": 0.1673, "acc_escalate": 64.80},
}
VARIANTS = (  # name, table, build-data options, train options
    ("2-class", 1, {}, {}),
    ("4-class", 1, {}, {"classes": 4}),
    ("10-class", 1, {}, {"classes": 10}),
    ("4-class ordinal", 1, {}, {"classes": 4, "ordinal": True}),
    ("annotated", 2, {}, {}),
    ("no annotation", 2, {"author_tags": False}, {}),
    ("balanced", 3, {}, {}),
    ("not balanced", 3, {"balance": False}, {}),
)


def spearman_ci(y_hat, adv, groups, n_boot: int, seed: int) -> tuple[float, list[float]]:
    from scipy.stats import spearmanr

    y_hat, adv, groups = np.asarray(y_hat), np.asarray(adv), np.asarray(groups)
    point = float(spearmanr(y_hat, adv)[0])
    ids = np.unique(groups)
    index = {g: np.flatnonzero(groups == g) for g in ids}
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        rows = np.concatenate([index[g] for g in rng.choice(ids, size=len(ids), replace=True)])
        if np.ptp(y_hat[rows]) > 0 and np.ptp(adv[rows]) > 0:
            vals.append(spearmanr(y_hat[rows], adv[rows])[0])
    return point, [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generate", required=True, help="a `generate` run directory on testbed training problems")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "router_ablations"))
    ap.add_argument("--base", help="classifier base (default: the testbed's shipped draft)")
    ap.add_argument("--kinds", default="classifier,probe")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import torch

    from arbitrage.factory import ModelOptions, load_model
    from arbitrage.router_training import build_data, evaluate_router, train_router
    from arbitrage.router_training.dataset import load_examples
    from arbitrage.router_training.evaluate import predict
    from arbitrage.testbed.evaluate import default_models_dir

    torch.set_num_threads(1)
    base = a.base or str(default_models_dir() / "draft")
    os.makedirs(a.out, exist_ok=True)
    work = os.path.join(a.out, "work")
    rows = []
    for kind in a.kinds.split(","):
        for name, table, data_opts, train_opts in VARIANTS:
            if kind == "probe" and table == 2:
                continue  # a probe reads no text: the annotation does not reach it
            data_dir = os.path.join(work, "data-" + "-".join(f"{k}{v}" for k, v in sorted(data_opts.items())))
            if not os.path.isfile(os.path.join(data_dir, "meta.json")):
                build_data([a.generate], data_dir, seed=a.seed, **data_opts)
            out = os.path.join(work, f"{kind}-{name.replace(' ', '_')}")
            t0 = time.perf_counter()
            if not os.path.isfile(os.path.join(out, "arbitrage_router.json")):
                extra = (
                    {"base": base, "lr": a.lr, "epochs": a.epochs, "batch_size": 16, "device": "cpu"}
                    if kind == "classifier"
                    else {}
                )
                train_router(data_dir, out, kind=kind, seed=a.seed, log=lambda *_: None, **train_opts, **extra)
            m = evaluate_router(out, data_dir)
            val = load_examples(os.path.join(data_dir, "validation.jsonl"))
            router = load_model("router", out, "router", ModelOptions(device="cpu", reuse_cache=False))
            y = predict(router, val)
            rho, ci = spearman_ci(y, [e.advantage for e in val], [e.problem_id for e in val], a.n_boot, a.seed)
            row = {
                "kind": kind,
                "variant": name,
                "table": table,
                "spearman": rho,
                "spearman_ci95": ci,
                "roc_auc": m["roc_auc"],
                "acc_keep": 100 * m["accuracy_keep"],
                "acc_escalate": 100 * m["accuracy_escalate"],
                "n_validation": m["n"],
                "n_classes": m.get("n_classes", 2),
                "seconds": round(time.perf_counter() - t0, 1),
                "paper": PAPER.get(name, {}),
            }
            rows.append(row)
            print(
                f"{kind:<10} T{table} {name:<16} Spearman {rho:.4f} [{ci[0]:.4f}, {ci[1]:.4f}] keep "
                f"{row['acc_keep']:.1f} escalate {row['acc_escalate']:.1f}",
                file=sys.stderr,
                flush=True,
            )
    lines = [
        "| router | table | variant | Spearman (95% CI) | paper | acc. keep / escalate (%) | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["paper"]
        paper_acc = f"{p.get('acc_keep', '–')} / {p.get('acc_escalate', '–')}" if p else "–"
        lines.append(
            f"| {r['kind']} | {r['table']} | {r['variant']} | {r['spearman']:.4f} ({r['spearman_ci95'][0]:.3f}"
            f"–{r['spearman_ci95'][1]:.3f}) | {p.get('spearman', '–')} | {r['acc_keep']:.1f} / "
            f"{r['acc_escalate']:.1f} | {paper_acc} |"
        )
    table = "\n".join(lines)
    print(table)
    report = {
        "generate": os.path.abspath(a.generate),
        "base": base,
        "epochs": a.epochs,
        "lr": a.lr,
        "seed": a.seed,
        "n_boot": a.n_boot,
        "rows": rows,
    }
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(table + "\n")
    return report


if __name__ == "__main__":
    main()
