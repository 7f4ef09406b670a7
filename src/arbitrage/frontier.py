"""A policy's accuracy/latency Pareto frontier and latency on it at a given accuracy: what sweeps, their
reports and the evidence's matched-accuracy comparisons all measure along."""

from __future__ import annotations

from collections.abc import Sequence

X, Y = "latency_s_mean", "accuracy"
EPS = 1e-9


def pareto_frontier(points: Sequence[dict], x: str = X, y: str = Y) -> list[dict]:
    """The points no other point beats (lower-or-equal x with higher y), sorted by x; y rises strictly."""
    front: list[dict] = []
    for p in sorted(points, key=lambda p: (p[x], -p[y])):
        if not front or p[y] > front[-1][y] + EPS:
            front.append(p)
    return front


def latency_at(front: Sequence[dict], accuracy: float, x: str = X, y: str = Y) -> float | None:
    """Latency on a frontier at `accuracy`, linear between its points; None outside the frontier's span."""
    if not front or accuracy < front[0][y] - EPS or accuracy > front[-1][y] + EPS:
        return None
    for a, b in zip(front, front[1:]):
        if a[y] - EPS <= accuracy <= b[y] + EPS:
            if abs(accuracy - a[y]) <= EPS:
                return a[x]
            return a[x] + (b[x] - a[x]) * (accuracy - a[y]) / (b[y] - a[y])
    return front[-1][x]  # a single-point frontier at exactly this accuracy
