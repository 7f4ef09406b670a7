"""The figures a user decides on, with their uncertainty, from the records of sweep points run on the same
problems (docs/method.md, "Statistics"):

- `matched`: latency of policy A against policy B at matched accuracy: each policy's points form an accuracy /
  mean-latency Pareto frontier, latency is interpolated linearly along it (sweep_report), and the ratio is taken
  at an accuracy both frontiers reach: B's best accuracy within A's span (the headline of sweep_report), or a
  given one (e.g. the target's accuracy minus one point). The 95% interval comes from a paired bootstrap over
  problems: resample the problem ids, recompute every point's accuracy and mean latency on the resample (the same
  problems for every point), rebuild both frontiers and re-interpolate.
- `sign_test`: two points' accuracy difference, with the exact two-sided sign test on the problems exactly one of
  them solved.
Nothing here runs a model; the points' records are read from their results files.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .frontier import EPS, latency_at, pareto_frontier
from .records import ProblemRecord


@dataclass
class Point:
    """One sweep point: its label, policy and per-problem (correct, latency)."""

    label: str
    policy: str
    threshold: float | None
    outcomes: dict[str, tuple[bool, float]]

    @classmethod
    def of(cls, label: str, policy: str, threshold, records: Sequence[ProblemRecord]) -> Point:
        return cls(label, policy, threshold, {r.id: (bool(r.correct), float(r.latency_s)) for r in records})

    def on(self, ids: Sequence[str]) -> dict:
        """Accuracy and mean latency on these problem ids (with repeats, as a bootstrap resample has)."""
        acc = sum(self.outcomes[i][0] for i in ids) / len(ids)
        lat = sum(self.outcomes[i][1] for i in ids) / len(ids)
        return {"label": self.label, "accuracy": acc, "latency_s_mean": lat}


def percentile_ci(values: Sequence[float], level: float = 0.95) -> list[float]:
    """The central `level` interval of bootstrap replicates (percentile method)."""
    v = sorted(values)
    tail = (1 - level) / 2
    return [v[int(tail * (len(v) - 1))], v[int(math.ceil((1 - tail) * (len(v) - 1)))]]


def paired_ratio_ci(num: Sequence[float], den: Sequence[float], n_boot: int = 2000, seed: int = 0) -> dict:
    """sum(num) / sum(den) over paired items (num[i] and den[i] measured on the same problem), with a 95% paired
    bootstrap interval that resamples the items."""
    if len(num) != len(den) or not num:
        raise ValueError("paired samples of equal, non-zero length")
    rng, n = random.Random(seed), len(num)
    boot = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        boot.append(sum(num[i] for i in idx) / sum(den[i] for i in idx))
    return {"ratio": sum(num) / sum(den), "ci95": percentile_ci(boot), "n": n, "n_boot": n_boot}


def sign_test_p(only_a: int, only_b: int) -> float:
    """Exact two-sided sign test (McNemar's exact test) on the discordant problems."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, j) for j in range(min(only_a, only_b) + 1)) / 2**n)


def common_ids(points: Sequence[Point]) -> list[str]:
    ids = set.intersection(*(set(p.outcomes) for p in points)) if points else set()
    return sorted(ids)


def _ratio(a_front, b_front, accuracy: float | None, b_at_best: bool = False):
    """(speedup b/a, accuracy) at `accuracy`, or at b's best accuracy that a also reaches; None if none.
    `b_at_best`: b's latency is that of its best point (a is compared at `accuracy`, e.g. b's minus a point)."""
    if not a_front or not b_front:
        return None
    if b_at_best:
        assert accuracy is not None  # with b_at_best the accuracy is b's best accuracy, offset
        la = latency_at(a_front, accuracy)
        if la is None and a_front[0]["accuracy"] > accuracy:  # a is above the asked accuracy everywhere (a
            la, accuracy = a_front[0]["latency_s_mean"], a_front[0]["accuracy"]  # lossless method): its cheapest point
        lb = b_front[-1]["latency_s_mean"]
        return (lb / la, accuracy) if la is not None and la > 0 else None
    if accuracy is None:
        hi = min(a_front[-1]["accuracy"], b_front[-1]["accuracy"])
        lo = max(a_front[0]["accuracy"], b_front[0]["accuracy"])
        if lo > hi + EPS:
            return None
        accuracy = hi
    la, lb = latency_at(a_front, accuracy), latency_at(b_front, accuracy)
    if la is None or lb is None or la <= 0:
        return None
    return lb / la, accuracy


def matched(
    a: Sequence[Point],
    b: Sequence[Point],
    accuracy: float | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    relative_to_b_accuracy: float | None = None,
) -> dict:
    """Latency of the points `a` (one policy) against `b` at matched accuracy: `speedup` = b's latency / a's
    (> 1: a is faster), with a paired bootstrap 95% interval. `accuracy`: compare at this accuracy;
    `relative_to_b_accuracy` = -0.01: a at b's best accuracy minus one point (recomputed in each resample) against
    b's best point itself (e.g. the router within a point of the target's accuracy, against target-only).
    When a's frontier does not reach the accuracy, `speedup` is None and `reason` says why."""
    ids = common_ids([*a, *b])
    if not ids:
        return {"speedup": None, "ci95": None, "accuracy": None, "n": 0, "reason": "no problems in common"}

    def target_accuracy(b_front):
        if relative_to_b_accuracy is None:
            return accuracy
        return b_front[-1]["accuracy"] + relative_to_b_accuracy

    def once(sample):
        a_front = pareto_frontier([p.on(sample) for p in a])
        b_front = pareto_frontier([p.on(sample) for p in b])
        return (
            _ratio(
                a_front,
                b_front,
                target_accuracy(b_front) if b_front else None,
                b_at_best=relative_to_b_accuracy is not None,
            ),
            a_front,
            b_front,
        )

    point, a_front, b_front = once(ids)
    out = {
        "n": len(ids),
        "n_boot": n_boot,
        "a_frontier": [f["label"] for f in a_front],
        "b_frontier": [f["label"] for f in b_front],
    }
    if point is None:
        a_span = (a_front[0]["accuracy"], a_front[-1]["accuracy"]) if a_front else None
        want = target_accuracy(b_front) if b_front else None
        reason = (
            f"the accuracies do not reach each other: {a_span} vs the other's "
            f"{(b_front[0]['accuracy'], b_front[-1]['accuracy']) if b_front else None}"
            + (f" (asked at {want:.3f})" if want is not None else "")
        )
        out.update(speedup=None, ci95=None, accuracy=want, reason=reason)
        return out
    rng = random.Random(seed)
    ratios, misses = [], 0
    for _ in range(n_boot):
        sample = [ids[rng.randrange(len(ids))] for _ in ids]
        r = once(sample)[0]
        if r is None:
            misses += 1
        else:
            ratios.append(r[0])
    ci = percentile_ci(ratios) if len(ratios) >= 20 else None
    out.update(speedup=point[0], ci95=ci, accuracy=point[1], reason=None, resamples_without_overlap=misses)
    if misses:
        out["note"] = f"{misses} of {n_boot} resamples had no matched accuracy and are left out of the interval"
    return out


def sign_test(a: Point, b: Point) -> dict:
    """Accuracy difference a - b on their common problems; exact two-sided sign test on discordant problems."""
    ids = common_ids([a, b])
    only_a = sum(a.outcomes[i][0] and not b.outcomes[i][0] for i in ids)
    only_b = sum(b.outcomes[i][0] and not a.outcomes[i][0] for i in ids)
    p = sign_test_p(only_a, only_b)
    acc_a = sum(a.outcomes[i][0] for i in ids) / len(ids) if ids else 0.0
    acc_b = sum(b.outcomes[i][0] for i in ids) / len(ids) if ids else 0.0
    return {
        "a": a.label,
        "b": b.label,
        "n": len(ids),
        "accuracy_a": acc_a,
        "accuracy_b": acc_b,
        "difference": acc_a - acc_b,
        "only_a": only_a,
        "only_b": only_b,
        "p_value": p,
    }
