"""What a sweep shows: the accuracy/latency Pareto frontier of each policy, latency at matched accuracy
(router against the others), a table, a JSON file and two plots.

Matched accuracy: on a policy's frontier (its points that no cheaper point beats in accuracy, sorted by
latency) accuracy rises strictly with latency, so latency is a piecewise-linear function of accuracy between
the frontier's points. Two policies are compared only on the accuracies *both* frontiers span (no
extrapolation): at each frontier accuracy inside that overlap, speedup = latency_other / latency_router
(> 1: the router is faster). The headline is the highest matched accuracy. When the spans do not overlap
the comparison says so and gives no ratio.

Accuracy on n problems moves in steps of 1/n with a binomial standard error of sqrt(p(1-p)/n); the table
shows it, and matched-accuracy ratios between points closer than that are within noise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .evidence import Point, matched
from .frontier import EPS, X, Y, latency_at, pareto_frontier
from .results import read_records, write_json_atomic

if TYPE_CHECKING:
    from matplotlib.typing import ColorType

# What the router is compared against, if present.
# Not compared with the router at matched accuracy: the draft alone (below every policy's accuracy) and the oracle
# (an upper bound that calls both models at every step). Every other policy of a sweep is a baseline.
NOT_BASELINES = ("router", "draft", "oracle")


def compare(name_a: str, front_a: Sequence[dict], name_b: str, front_b: Sequence[dict]) -> dict:
    """Latency of `name_a` against `name_b` at matched accuracy; speedup = latency_b / latency_a."""
    out: dict[str, Any] = {
        "a": name_a,
        "b": name_b,
        "span_a": None,
        "span_b": None,
        "status": "no_points",
        "at": [],
        "headline": None,
        "note": "",
    }
    if not front_a or not front_b:
        missing = name_a if not front_a else name_b
        out["note"] = f"{missing} has no points"
        return out
    span_a, span_b = (front_a[0][Y], front_a[-1][Y]), (front_b[0][Y], front_b[-1][Y])
    out.update(span_a=list(span_a), span_b=list(span_b))
    lo, hi = max(span_a[0], span_b[0]), min(span_a[1], span_b[1])
    if lo > hi + EPS:
        out["status"] = "no_overlap"
        if span_a[1] < span_b[0]:
            below, sb, above, sa = name_a, span_a, name_b, span_b
        else:
            below, sb, above, sa = name_b, span_b, name_a, span_a
        out["note"] = (
            f"accuracies do not overlap: {below} spans {_span(sb)}, all below {above}'s {_span(sa)}; "
            f"no latency at matched accuracy"
        )
        return out
    levels = sorted({p[Y] for p in (*front_a, *front_b) if lo - EPS <= p[Y] <= hi + EPS} | {lo, hi})
    rows = []
    for acc in levels:
        la, lb = latency_at(front_a, acc), latency_at(front_b, acc)
        if la is None or lb is None:
            continue
        rows.append(
            {
                "accuracy": acc,
                f"latency_{name_a}": la,
                f"latency_{name_b}": lb,
                "speedup": lb / la if la > 0 else math.inf,
            }
        )
    rows = _dedupe(rows)
    out.update(
        status="matched", at=rows, headline=rows[-1] if rows else None, note=f"matched on accuracy {_span((lo, hi))}"
    )
    return out


def _dedupe(rows: list[dict]) -> list[dict]:
    out: list[dict] = []
    for r in rows:
        if not out or abs(r["accuracy"] - out[-1]["accuracy"]) > EPS:
            out.append(r)
    return out


def _span(s) -> str:
    return f"[{s[0]:.3f}, {s[1]:.3f}]" if abs(s[1] - s[0]) > EPS else f"{s[0]:.3f}"


def label(m: dict) -> str:
    return m["policy"] if m.get("threshold") is None else f"{m['policy']}@{m['threshold']:g}"


def summarize(points: Sequence[dict]) -> dict:
    """Frontier per policy and the router's matched-accuracy comparisons, from the points' metrics."""
    by_policy: dict[str, list[dict]] = {}
    for m in points:
        m.setdefault("accuracy_se", math.sqrt(m[Y] * (1 - m[Y]) / m["n"]) if m.get("n") else 0.0)
        by_policy.setdefault(m["policy"], []).append(m)
    fronts = {name: pareto_frontier(ms) for name, ms in by_policy.items()}
    comparisons = [
        compare("router", fronts["router"], b, fronts[b])
        for b in fronts
        if "router" in fronts and b not in NOT_BASELINES
    ]
    notes = []
    if "router" not in fronts:
        notes.append("no router points: no matched-accuracy comparison")
    conc = sorted({m["concurrency"] for m in points if m.get("concurrency")})
    if len(conc) > 1:
        notes.append(
            f"points ran with different numbers of problems in flight {conc} (assisted runs one at a "
            f"time): their latencies are not comparable; use --concurrency 1"
        )
    sizes: set[Any] = {m.get("n") for m in points}  # each point's number of problems (a JSON value)
    ns = sorted(sizes)
    if len(ns) > 1:
        notes.append(f"points have different numbers of problems {ns}: finish the sweep before comparing")
    return {
        "points": list(points),
        "frontiers": {
            name: [
                {"label": label(p), "threshold": p.get("threshold"), Y: p[Y], X: p[X], "dir": p.get("dir")} for p in f
            ]
            for name, f in fronts.items()
        },
        "comparisons": comparisons,
        "notes": notes,
    }


def format_table(summary: dict) -> str:
    on_front = {(f["label"]) for fs in summary["frontiers"].values() for f in fs}
    head = (
        f"{'point':<18} {'n':>4} {'acc':>6} {'±se':>5} {'esc':>5} {'lat_mean':>9} {'lat_p50':>8} "
        f"{'tgt_calls':>9} {'judge':>6} {'tgt_tok':>8} {'drf_acc':>8} front"
    )
    lines = [head, "-" * len(head)]
    for m in summary["points"]:
        esc = m.get("escalation_rate")
        lines.append(
            f"{label(m):<18} {m['n']:>4} {m[Y]:>6.3f} {m['accuracy_se']:>5.3f} "
            f"{'  -  ' if esc is None else format(esc, '5.3f')} {m[X]:>9.3f} {m['latency_s_p50']:>8.3f} "
            f"{m['target_calls']:>9} {m.get('judge_calls', 0):>6} {m['target_tokens']:>8} "
            f"{m['draft_tokens_accepted']:>8} {'*' if label(m) in on_front else ''}"
        )
    lines.append("")
    lines.append("latency at matched accuracy (speedup = other's latency / router's; > 1: router faster):")
    for c in summary["comparisons"]:
        h = c["headline"]
        if c["status"] == "matched" and h is not None:
            ci = c.get("ci95")
            interval = f" [95% CI {ci[0]:.2f}-{ci[1]:.2f}, n={c.get('n_paired')}]" if ci else ""
            lines.append(
                f"  router vs {c['b']:<10} at acc {h['accuracy']:.3f}: {h['speedup']:.2f}x{interval} "
                f"({h['latency_' + c['b']]:.3f} s vs {h['latency_router']:.3f} s); {c['note']}"
            )
        else:
            lines.append(f"  router vs {c['b']:<10} {c['note']}")
    if not summary["comparisons"]:
        lines.append("  (none)")
    lines += [f"note: {n}" for n in summary["notes"]]
    return "\n".join(lines)


MARKERS = "osD^v<>PXh*"


def plot(summary: dict, out_dir: str) -> list[str]:
    """accuracy_vs_latency.png and accuracy_vs_escalation.png: every point with its accuracy's standard error,
    each policy's Pareto frontier as a line, thresholds as labels placed so that none overlaps another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    by_policy: dict[str, list[dict]] = {}
    for m in summary["points"]:
        by_policy.setdefault(m["policy"], []).append(m)
    ns = sorted({m.get("n") for m in summary["points"] if m.get("n")})
    conc = sorted({m.get("concurrency") for m in summary["points"] if m.get("concurrency")})
    sub = (
        f"n = {'/'.join(map(str, ns))} problems"
        + (f", {'/'.join(map(str, conc))} in flight" if conc else "")
        + (", points interleaved problem by problem" if any(m.get("interleaved") for m in summary["points"]) else "")
    )
    paths = []
    for fname, xkey, xlabel, title in (
        ("accuracy_vs_latency.png", X, "mean latency per problem (seconds)", "Accuracy against latency"),
        (
            "accuracy_vs_escalation.png",
            "escalation_rate",
            "escalation rate (share of steps the target wrote)",
            "Accuracy against escalation rate",
        ),
    ):
        fig, ax = plt.subplots(figsize=(7.6, 5.2), dpi=130)
        labels = []
        for k, (name, ms) in enumerate(by_policy.items()):
            ms = sorted((m for m in ms if m.get(xkey) is not None), key=lambda m: m[xkey])
            if not ms:
                continue
            err = ax.errorbar(
                [m[xkey] for m in ms],
                [m[Y] for m in ms],
                yerr=[m.get("accuracy_se", 0) for m in ms],
                fmt=MARKERS[k % len(MARKERS)],
                ms=5,
                capsize=2,
                elinewidth=0.8,
                label=name,
            )
            color = err.lines[0].get_color()
            line = pareto_frontier(ms, x=xkey) if xkey == X else ms
            if len(line) > 1:
                ax.plot([m[xkey] for m in line], [m[Y] for m in line], "-", color=color, alpha=0.6, lw=1.2)
            labels += [(m[xkey], m[Y], f"{m['threshold']:g}", color) for m in ms if m.get("threshold") is not None]
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (share of problems solved)")
        ax.set_title(f"{title}\n({sub})", fontsize=10)
        ax.grid(alpha=0.3)
        handles, names = ax.get_legend_handles_labels()
        handles += [
            Line2D([], [], color="gray", lw=1.2),
            Line2D([], [], ls="", marker="$0.5$", color="gray", ms=12),
            Line2D([], [], ls="", marker="|", color="gray", ms=8),
        ]
        names += [
            "line: the policy's Pareto frontier" if xkey == X else "line: the policy's points in order",
            "label: the point's threshold τ",
            "bar: ± one standard error",
        ]
        ax.legend(handles, names, fontsize=7, loc="lower right", framealpha=0.9)
        fig.tight_layout()
        _place_labels(fig, ax, labels)
        path = os.path.join(out_dir, fname)
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def _place_labels(fig, ax, labels: list[tuple[float, float, str, ColorType]]) -> int:
    """Put each (x, y, text, color) label at the first of a few offsets around its point where it overlaps no
    other label, no point and not the legend; a label with no free place is left out (returns how many)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    taken = [ax.get_legend().get_window_extent(renderer)] if ax.get_legend() else []
    points = [ax.transData.transform((x, y)) for x, y, _, _ in labels]
    dropped = 0
    offsets = [(4, 4), (4, -11), (-6, 6), (-6, -12), (8, 0), (-10, 0), (0, 10), (0, -15), (10, 10), (10, -18)]
    for x, y, text, color in labels:
        for dx, dy in offsets:
            ann = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=6.5,
                color=color,
                ha="right" if dx < 0 else "left",
            )
            box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
            hits_point = any(box.contains(px, py) for px, py in points)
            if (
                not hits_point
                and not any(box.overlaps(t) for t in taken)
                and ax.get_window_extent(renderer).contains(box.x0, box.y0)
            ):
                taken.append(box)
                break
            ann.remove()
        else:
            dropped += 1
    return dropped


def add_intervals(summary: dict, out_dir: str, n_boot: int = 1000) -> None:
    """A paired bootstrap 95% interval for every matched comparison (evidence.matched over the points' records,
    resampling problems): `ci95`, `n` and the interval's own accuracy on each comparison."""

    def points_of(policy: str) -> list[Point]:
        out = []
        for m in summary["points"]:
            path = os.path.join(out_dir, m.get("dir") or "")
            if m["policy"] == policy and m.get("dir") and os.path.isfile(os.path.join(path, "results.jsonl")):
                out.append(Point.of(label(m), policy, m.get("threshold"), read_records(path)))
        return out

    for c in summary["comparisons"]:
        if c["status"] != "matched":
            continue
        a, b = points_of(c["a"]), points_of(c["b"])
        if not a or not b:
            continue
        m = matched(a, b, n_boot=n_boot)
        c["ci95"], c["n_paired"] = m.get("ci95"), m.get("n")
        if m.get("note"):
            c["bootstrap_note"] = m["note"]


def write_report(points: Sequence[dict], out_dir: str, plots: bool = True, echo: bool = False) -> dict:
    """OUT/sweep.json (points, frontiers, comparisons with paired bootstrap intervals), OUT/sweep.txt (the
    table) and the plots."""
    summary = summarize(points)
    add_intervals(summary, out_dir)
    table = format_table(summary)
    summary["plots"] = [os.path.basename(p) for p in plot(summary, out_dir)] if plots else []
    write_json_atomic(os.path.join(out_dir, "sweep.json"), summary)
    with open(os.path.join(out_dir, "sweep.txt"), "w") as f:
        f.write(table + "\n")
    if echo:
        print(table)
    return summary
