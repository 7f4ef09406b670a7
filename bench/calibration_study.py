#!/usr/bin/env python3
"""Does `arbitrage calibrate`'s guarantee hold, and what does it cost? From recorded per-problem outcomes only
(no model runs): a sweep's point directories (target-only and thresholds of rsd, router, confidence, glimpse on
the same problems, each with every problem's record) are split at random, many times, into a calibration part and
a held-out part. On each split the selection `arbitrage calibrate` runs (arbitrage.calibrate.select: Learn-then-
Test, fixed-sequence testing along each policy's thresholds from the safest, delta split over the policies)
chooses a point from the calibration part alone, and the held-out part measures what it did:

- violation (held-out): the chosen point's accuracy loss against target-only on the held-out problems > epsilon;
- violation (population): its loss on all the recorded problems > epsilon. The guarantee is about this one: the
  recorded problems stand for the distribution and the calibration part is a draw from them, so the share of
  splits in violation must stay at or below delta (up to the split-to-split noise of the share itself). The
  held-out loss adds the held-out part's own sampling noise, and, since the two parts are complementary, a
  calibration part that happened to look good leaves a held-out part that looks worse: its share may sit
  slightly above delta without the guarantee failing;
- speed-up: target-only's mean held-out latency over the chosen point's (1 when nothing is certified and
  target-only is kept), against the fastest recorded point whose held-out accuracy is at least the chosen
  point's (an oracle that sees the held-out outcomes): their ratio is what the guarantee costs;
- for contrast, the naive choice without a guarantee: the cheapest point whose calibration loss is <= epsilon.

    python bench/calibration_study.py [--splits 500] [--out bench/results/calibration_study.json]

The benchmark reads only files inside this repository: bench/results/testbed_evidence/points (500 test problems)
and bench/results/testbed_demo/points (100).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time

import numpy as np

from arbitrage.calibrate import NOTHING_CERTIFIABLE, Outcomes, min_problems, select
from arbitrage.records import ProblemRecord
from arbitrage.sweep import point_dir

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = {  # name: (points directory, calibration sizes)
    "testbed_evidence": (os.path.join(HERE, "results", "testbed_evidence", "points"), (100, 200, 300)),
    "testbed_demo": (os.path.join(HERE, "results", "testbed_demo", "points"), (50, 70)),
}
POLICIES = ("rsd", "router", "confidence", "glimpse")


def read_point(directory: str) -> list[ProblemRecord]:
    for name, opener in (("results.jsonl.gz", gzip.open), ("results.jsonl", open)):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with opener(path, "rt", encoding="utf-8") as f:
                return [
                    ProblemRecord.from_json(json.loads(line), f"{path}:{i + 1}")
                    for i, line in enumerate(f)
                    if line.strip()
                ]
    raise FileNotFoundError(f"{directory}: no results.jsonl(.gz)")


def load_points(points_dir: str, policies=POLICIES) -> tuple[Outcomes, list[Outcomes], list[str]]:
    """Target-only and every point of `policies` whose directory is POLICY-TAU (the early-decision router's
    `early-router-*` points are another router and are left out), aligned on their common problems."""
    loaded = {}
    for name in sorted(os.listdir(points_dir)):
        d = os.path.join(points_dir, name)
        if not os.path.isdir(d):
            continue
        records = read_point(d)
        policy, tau = records[0].policy, records[0].threshold
        if point_dir(policy, tau) != name or (policy != "target" and policy not in policies):
            continue
        loaded[name] = (policy, tau, records)
    ids = sorted(set.intersection(*({r.id for r in recs} for _, _, recs in loaded.values())))
    target = None
    candidates = []
    for policy, tau, records in loaded.values():
        o = Outcomes.of(records, ids, policy, tau, label=f"{policy}@{tau:g}" if tau is not None else policy)
        if policy == "target":
            target = o
        else:
            candidates.append(o)
    if target is None:
        raise SystemExit(f"{points_dir}: no target-only point")
    return target, candidates, ids


def loss(target: Outcomes, point: Outcomes | None, idx) -> float:
    if point is None:
        return 0.0
    return float(target.correct[idx].mean() - point.correct[idx].mean())


def clopper_pearson(k: int, n: int, level: float = 0.95) -> list[float]:
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return [lo, hi]


def study(
    target: Outcomes,
    candidates: list[Outcomes],
    size: int,
    epsilon: float,
    delta: float,
    splits: int,
    seed: int,
    method: str = "exact",
) -> dict:
    n_all = len(target)
    everyone = [target] + candidates
    by_label = {c.label: c for c in candidates}
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(splits):
        perm = rng.permutation(n_all)
        cal, ho = perm[:size], perm[size:]
        sel = select(target.take(cal), [c.take(cal) for c in candidates], epsilon, delta, method)
        chosen = by_label[sel.chosen.label] if sel.chosen is not None else None
        pick = chosen or target
        acc_ho = float(pick.correct[ho].mean())
        lat_t = float(target.latency[ho].mean())
        speedup = lat_t / float(pick.latency[ho].mean())
        # the fastest recorded point at least as accurate on the held-out problems (an oracle)
        best = min((p for p in everyone if p.correct[ho].mean() >= acc_ho - 1e-12), key=lambda p: p.latency[ho].mean())
        best_speedup = lat_t / float(best.latency[ho].mean())
        # the naive choice: the cheapest point whose calibration loss is <= epsilon (no guarantee)
        ok = [c for c in candidates if loss(target, c, cal) <= epsilon + 1e-12]
        naive = min(ok, key=lambda c: c.latency[cal].mean()) if ok else None
        rows.append(
            {
                "chosen": chosen.label if chosen else None,
                "loss_heldout": loss(target, chosen, ho),
                "loss_population": loss(target, chosen, np.arange(n_all)),
                "speedup": speedup,
                "best_speedup": best_speedup,
                "naive": naive.label if naive else None,
                "naive_loss_heldout": loss(target, naive, ho),
                "naive_loss_population": loss(target, naive, np.arange(n_all)),
                "naive_speedup": lat_t / float((naive or target).latency[ho].mean()),
            }
        )
    k_ho = sum(r["loss_heldout"] > epsilon + 1e-12 for r in rows)
    k_pop = sum(r["loss_population"] > epsilon + 1e-12 for r in rows)
    kn_ho = sum(r["naive_loss_heldout"] > epsilon + 1e-12 for r in rows)
    kn_pop = sum(r["naive_loss_population"] > epsilon + 1e-12 for r in rows)
    certified = sum(r["chosen"] is not None for r in rows)
    choices: dict[str, int] = {}
    for r in rows:
        choices[r["chosen"] or "target-only"] = choices.get(r["chosen"] or "target-only", 0) + 1
    speed = float(np.mean([r["speedup"] for r in rows]))
    best = float(np.mean([r["best_speedup"] for r in rows]))
    level = delta / len({c.policy for c in candidates})
    return {
        "calibration_size": size,
        "heldout_size": n_all - size,
        "epsilon": epsilon,
        "delta": delta,
        "method": method,
        "splits": splits,
        "level_per_policy": level,
        "min_problems": min_problems(epsilon, level, method),
        "certified_share": certified / splits,
        "violation_heldout": k_ho / splits,
        "violation_heldout_ci95": clopper_pearson(k_ho, splits),
        "violation_population": k_pop / splits,
        "violation_population_ci95": clopper_pearson(k_pop, splits),
        "speedup_mean": speed,
        "best_same_accuracy_speedup_mean": best,
        "speedup_share_of_best": float(np.mean([r["speedup"] / r["best_speedup"] for r in rows])),
        "loss_heldout_mean": float(np.mean([r["loss_heldout"] for r in rows])),
        "choices": dict(sorted(choices.items(), key=lambda kv: -kv[1])),
        "naive_violation_heldout": kn_ho / splits,
        "naive_violation_population": kn_pop / splits,
        "naive_speedup_mean": float(np.mean([r["naive_speedup"] for r in rows])),
    }


def table(results: list[dict]) -> list[str]:
    head = (
        f"{'source':<17}{'n_cal':>6}{'eps':>6}{'cert':>6}{'viol_pop':>9}{'viol_ho':>8}{'speedup':>8}"
        f"{'best':>6}{'share':>6}  {'naive: viol_pop':>15}{'viol_ho':>8}{'speedup':>8}  most chosen"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        top = ", ".join(f"{k} {v / r['splits']:.0%}" for k, v in list(r["choices"].items())[:2])
        lines.append(
            f"{r['source']:<17}{r['calibration_size']:>6}{r['epsilon']:>6.2f}{r['certified_share']:>6.0%}"
            f"{r['violation_population']:>9.1%}{r['violation_heldout']:>8.1%}{r['speedup_mean']:>8.2f}"
            f"{r['best_same_accuracy_speedup_mean']:>6.2f}{r['speedup_share_of_best']:>6.0%}  "
            f"{r['naive_violation_population']:>15.1%}{r['naive_violation_heldout']:>8.1%}"
            f"{r['naive_speedup_mean']:>8.2f}  {top}"
        )
    return lines


def plot(results: list[dict], source: str, delta: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = [r for r in results if r["source"] == source]
    epsilons = sorted({r["epsilon"] for r in rows})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, eps in enumerate(epsilons):
        rs = sorted((r for r in rows if r["epsilon"] == eps), key=lambda r: r["calibration_size"])
        x = [r["calibration_size"] for r in rs]
        pop = [r["violation_population"] for r in rs]
        err = [
            [p - r["violation_population_ci95"][0] for p, r in zip(pop, rs)],
            [r["violation_population_ci95"][1] - p for p, r in zip(pop, rs)],
        ]
        ax1.errorbar(x, pop, yerr=err, marker="o", color=colors[i], capsize=3)
        ax1.plot(x, [r["violation_heldout"] for r in rs], marker="s", ls="--", color=colors[i], alpha=0.7)
        ax1.plot(x, [r["naive_violation_population"] for r in rs], marker="x", ls=":", color=colors[i], alpha=0.7)
        ax2.plot(x, [r["speedup_mean"] for r in rs], marker="o", color=colors[i])
        ax2.plot(x, [r["best_same_accuracy_speedup_mean"] for r in rs], marker="^", ls="--", color=colors[i], alpha=0.7)
    ax1.axhline(delta, color="k", lw=1, ls="-.")
    ax1.set_xlabel("calibration problems")
    ax1.set_ylabel("share of random splits")
    ax1.set_title("How often the chosen point loses more than eps")
    ax1.set_ylim(-0.02, max(0.3, max((r["naive_violation_population"] for r in rows), default=0) + 0.05))
    ax1.legend(
        handles=[
            Line2D([], [], color="gray", marker="o", label="calibrate: loss on all recorded problems > eps (95% CI)"),
            Line2D([], [], color="gray", marker="s", ls="--", label="calibrate: loss on the held-out part > eps"),
            Line2D(
                [],
                [],
                color="gray",
                marker="x",
                ls=":",
                label="naive (cheapest with calibration loss <= eps): loss on all > eps",
            ),
            Line2D([], [], color="k", ls="-.", label=f"delta = {delta:g}"),
        ],
        fontsize=7,
        loc="center right",
    )
    ax2.axhline(1.0, color="k", lw=1, ls="-.")
    ax2.set_ylim(0.7, max([r["best_same_accuracy_speedup_mean"] for r in rows] + [1.2]) + 0.05)
    ax2.set_xlabel("calibration problems")
    ax2.set_ylabel("speed-up vs target-only (held-out mean latency)")
    ax2.set_title("What the guarantee costs (nothing certified: target-only, 1.0)")
    ax2.legend(
        handles=[
            Line2D([], [], color="gray", marker="o", label="calibrate's choice"),
            Line2D(
                [],
                [],
                color="gray",
                marker="^",
                ls="--",
                label="fastest recorded point at least as accurate on the held-out part",
            ),
            Line2D([], [], color="k", ls="-.", label="target-only"),
        ],
        fontsize=7,
        loc="lower right",
    )
    fig.legend(
        handles=[Line2D([], [], color=colors[i], lw=3, label=f"eps = {eps:g}") for i, eps in enumerate(epsilons)],
        loc="lower center",
        ncol=len(epsilons),
        fontsize=8,
        title="allowed accuracy loss (color)",
        title_fontsize=8,
    )
    n_all = rows[0]["calibration_size"] + rows[0]["heldout_size"] if rows else 0
    fig.suptitle(
        f"arbitrage calibrate on {source}: {n_all} recorded problems, {rows[0]['splits'] if rows else 0} "
        f"random calibration/held-out splits per point\ncandidates rsd, router, confidence, glimpse "
        f"(4 thresholds each), delta = {delta:g} split over the 4, exact p-value",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--splits", type=int, default=500, help="random splits per (source, size, epsilon)")
    ap.add_argument("--epsilons", default="0.01,0.02,0.05,0.1")
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "calibration_study.json"))
    ap.add_argument("--plot", default=os.path.join(HERE, "results", "calibration_study.png"))
    args = ap.parse_args(argv)
    if args.splits < 200:
        raise SystemExit("--splits must be at least 200")
    epsilons = [float(e) for e in args.epsilons.split(",")]
    results, info = [], {}
    t0 = time.time()
    for source in args.sources.split(","):
        points_dir, sizes = SOURCES[source]
        target, candidates, ids = load_points(points_dir)
        info[source] = {
            "points_dir": os.path.relpath(points_dir, os.path.dirname(HERE)),
            "n": len(ids),
            "target_accuracy": target.accuracy,
            "target_latency_s_mean": target.latency_mean,
            "points": {
                c.label: {
                    "accuracy": c.accuracy,
                    "latency_s_mean": c.latency_mean,
                    "loss": target.accuracy - c.accuracy,
                    "speedup": target.latency_mean / c.latency_mean,
                }
                for c in candidates
            },
        }
        for size in sizes:
            for eps in epsilons:
                r = study(
                    target,
                    candidates,
                    size,
                    eps,
                    args.delta,
                    args.splits,
                    seed=args.seed + 1000 * size + int(round(eps * 1e4)),
                )
                r["source"] = source
                results.append(r)
                print(f"  {source} n_cal={size} eps={eps:g}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    hb = {f"{eps:g}": min_problems(eps, args.delta / len(POLICIES), "hb") for eps in epsilons}
    lines = table(results)
    lines.append("")
    lines.append(
        f"delta = {args.delta:g}, split over {len(POLICIES)} policies; Hoeffding-Bentkus (--p-value hb) "
        f"would need at least "
        + ", ".join(f"{v} problems at eps {k}" for k, v in hb.items())
        + " to certify even a point that agrees with target-only on every problem."
    )
    report = {
        "delta": args.delta,
        "splits": args.splits,
        "policies": list(POLICIES),
        "sources": info,
        "hb_min_problems": hb,
        "nothing_certifiable_message": NOTHING_CERTIFIABLE,
        "results": results,
        "table": lines,
        "seconds": time.time() - t0,
    }
    print("\n".join(lines))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    if args.plot:
        plot(
            results,
            "testbed_evidence" if "testbed_evidence" in args.sources else args.sources.split(",")[0],
            args.delta,
            args.plot,
        )
    print(f"wrote {args.out} and {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
