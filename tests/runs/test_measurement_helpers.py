"""The pieces every benchmark's figures rest on: the scripted share router (the same decisions under every
scheduling), the paired bootstrap interval of a ratio of means, and the exact sign test."""

from __future__ import annotations

import random

import pytest

from arbitrage.evidence import paired_ratio_ci, percentile_ci, sign_test_p
from arbitrage.testing import ShareRouter
from arbitrage.types import RouteRequest, Step


def _requests(n_problems: int, n_steps: int) -> list[RouteRequest]:
    step = Step(author="draft", text="x", stop="separator", n_tokens=1)
    return [RouteRequest(f"p{i}", "q", [step] * k, step) for i in range(n_problems) for k in range(n_steps)]


@pytest.mark.parametrize("share", [0.0, 0.3, 0.5, 1.0])
def test_share_router_escalates_that_share_and_the_same_steps_every_time(share):
    reqs = _requests(200, 10)
    ys = ShareRouter(share).predict(reqs)
    assert set(ys) <= {0.0, 1.0}
    assert sum(ys) / len(ys) == pytest.approx(share, abs=0.03)
    shuffled = list(reqs)
    random.Random(0).shuffle(shuffled)  # another batching order: each step's decision is its own
    again = dict(zip(((r.key, len(r.steps)) for r in shuffled), ShareRouter(share).predict(shuffled)))
    assert [again[(r.key, len(r.steps))] for r in reqs] == ys


def test_paired_ratio_interval_covers_the_ratio_and_narrows_with_agreement():
    rng = random.Random(1)
    den = [1.0 + rng.random() for _ in range(200)]
    noisy = [d * (1.05 + 0.2 * (rng.random() - 0.5)) for d in den]
    r = paired_ratio_ci(noisy, den, n_boot=1000)
    lo, hi = r["ci95"]
    assert lo < r["ratio"] < hi and 1.03 < lo and hi < 1.07 and r["n"] == 200
    exact = paired_ratio_ci([2 * d for d in den], den, n_boot=200)  # every pair has the same ratio
    assert exact["ci95"] == pytest.approx([2.0, 2.0]) and exact["ratio"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        paired_ratio_ci([1.0], [1.0, 2.0])


def test_percentile_interval_and_sign_test_values():
    assert percentile_ci(list(range(101))) == [2, 98]
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 5) == 1.0
    assert sign_test_p(10, 0) == pytest.approx(2 / 2**10)
    assert sign_test_p(1, 9) == pytest.approx(2 * 11 / 2**10)
