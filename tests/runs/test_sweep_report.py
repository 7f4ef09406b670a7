"""Sweep arithmetic on hand-made points: Pareto frontier, latency at matched accuracy (interpolated on the
frontier, never extrapolated), no-overlap reporting, threshold syntax."""

import pytest

from arbitrage.errors import ConfigError
from arbitrage.frontier import latency_at, pareto_frontier
from arbitrage.sweep import parse_thresholds, parse_values, point_dir, sweep_points
from arbitrage.sweep_report import compare, format_table, summarize


def pt(lat, acc, policy="p", tau=None, n=100):
    return {
        "policy": policy,
        "threshold": tau,
        "latency_s_mean": lat,
        "accuracy": acc,
        "n": n,
        "escalation_rate": 0.5,
        "latency_s_p50": lat,
        "target_calls": 1,
        "target_tokens": 1,
        "draft_tokens_accepted": 1,
    }


def test_pareto_frontier_drops_dominated_and_ties():
    pts = [pt(3, 0.6), pt(1, 0.4), pt(2, 0.35), pt(2, 0.5), pt(4, 0.6), pt(5, 0.7), pt(1, 0.3), pt(5, 0.7)]
    front = pareto_frontier(pts)
    assert [(p["latency_s_mean"], p["accuracy"]) for p in front] == [(1, 0.4), (2, 0.5), (3, 0.6), (5, 0.7)]
    assert pareto_frontier([]) == []


def test_latency_at_interpolates_only_inside_the_frontier():
    front = pareto_frontier([pt(1, 0.4), pt(3, 0.6), pt(5, 0.7)])
    assert latency_at(front, 0.4) == 1
    assert latency_at(front, 0.5) == pytest.approx(2.0)
    assert latency_at(front, 0.65) == pytest.approx(4.0)
    assert latency_at(front, 0.7) == 5
    assert latency_at(front, 0.39) is None and latency_at(front, 0.71) is None
    assert latency_at(pareto_frontier([pt(2, 0.5)]), 0.5) == 2


def test_compare_matched_accuracy_speedups():
    router = pareto_frontier([pt(1, 0.5, "router"), pt(2, 0.7, "router"), pt(3, 0.75, "router")])
    rsd = pareto_frontier([pt(2, 0.5, "rsd"), pt(4, 0.7, "rsd")])
    c = compare("router", router, "rsd", rsd)
    assert c["status"] == "matched"
    assert [r["accuracy"] for r in c["at"]] == pytest.approx([0.5, 0.7])
    assert [r["speedup"] for r in c["at"]] == pytest.approx([2.0, 2.0])
    assert c["headline"]["accuracy"] == pytest.approx(0.7) and c["headline"]["latency_rsd"] == 4
    # a mid-frontier target-only point: router latency interpolated at the target's accuracy
    t = compare("router", router, "target", pareto_frontier([pt(6, 0.6, "target")]))
    assert t["status"] == "matched" and t["headline"]["latency_router"] == pytest.approx(1.5)
    assert t["headline"]["speedup"] == pytest.approx(4.0)


def test_compare_reports_no_overlap_both_ways():
    router = pareto_frontier([pt(1, 0.3), pt(2, 0.4)])
    target = pareto_frontier([pt(5, 0.6)])
    c = compare("router", router, "target", target)
    assert c["status"] == "no_overlap" and c["headline"] is None and c["at"] == []
    assert "do not overlap" in c["note"] and "router spans [0.300, 0.400], all below target's 0.600" in c["note"]
    c2 = compare("router", pareto_frontier([pt(1, 0.8)]), "target", target)
    assert c2["status"] == "no_overlap" and "target spans 0.600, all below router's 0.800" in c2["note"]
    assert compare("router", [], "rsd", router)["status"] == "no_points"


def test_summary_and_table_mark_frontier_and_comparisons():
    pts = [
        pt(1, 0.5, "router", 0.5),
        pt(2, 0.7, "router", 0.2),
        pt(2, 0.5, "rsd", 0.7),
        pt(4, 0.7, "rsd", 0.3),
        pt(3, 0.4, "router", 0.9),
        pt(5, 0.9, "target"),
    ]
    s = summarize(pts)
    assert [f["label"] for f in s["frontiers"]["router"]] == ["router@0.5", "router@0.2"]
    names = {c["b"]: c for c in s["comparisons"]}
    assert set(names) == {"rsd", "target"} and names["target"]["status"] == "no_overlap"
    assert names["rsd"]["headline"]["speedup"] == pytest.approx(2.0)
    table = format_table(s)
    assert "router vs rsd" in table and "2.00x" in table and "do not overlap" in table
    assert pts[0]["accuracy_se"] == pytest.approx((0.25 / 100) ** 0.5)
    assert "no router points" in summarize([pt(1, 0.5, "rsd", 0.5)])["notes"][0]
    mixed = [dict(pt(1, 0.5, "router", 0.5), concurrency=8), dict(pt(2, 0.5, "assisted"), concurrency=1)]
    assert any("not comparable" in n for n in summarize(mixed)["notes"])


def test_threshold_syntax():
    assert parse_values("0.1:0.5:0.2") == [0.1, 0.3, 0.5]
    assert parse_values("0.7,0.3, 0.5,0.3") == [0.3, 0.5, 0.7]
    assert parse_values("0,0.2:0.4:0.1") == [0.0, 0.2, 0.3, 0.4]
    assert parse_thresholds(["rsd=0.3,0.5", "router=0:1:0.5", "rsd=0.9"]) == {
        "rsd": [0.3, 0.5, 0.9],
        "router": [0.0, 0.5, 1.0],
    }
    for bad in (["rsd"], ["draft=0.5"], ["rsd=a"], ["rsd=0.5:0.1:0.1"], ["rsd=0:1:0"], ["rsd="]):
        with pytest.raises(ConfigError):
            parse_thresholds(bad)


def test_sweep_points_order_defaults_and_errors():
    pts = sweep_points(["draft", "rsd", "router", "assisted", "specreason"], {"rsd": [0.3, 0.5]})
    assert pts == [
        ("draft", None),
        ("rsd", 0.3),
        ("rsd", 0.5),
        ("router", 0.5),
        ("assisted", None),
        ("specreason", 7.0),
    ]
    assert [point_dir(*p) for p in pts[:3]] == ["draft", "rsd-0.3", "rsd-0.5"]
    with pytest.raises(ConfigError, match="unknown policy"):
        sweep_points(["nope"], {})
    with pytest.raises(ConfigError, match="not in --policies"):
        sweep_points(["draft"], {"rsd": [0.5]})


def test_matched_accuracy_is_the_highest_common_accuracy_not_the_lowest():
    a = pareto_frontier([pt(1, 0.5, "a"), pt(3, 0.8, "a")])
    b = pareto_frontier([pt(2, 0.5, "b"), pt(9, 0.8, "b")])
    c = compare("a", a, "b", b)
    assert c["headline"]["accuracy"] == pytest.approx(0.8) and c["headline"]["speedup"] == pytest.approx(3.0)


def test_evidence_compares_at_the_best_common_accuracy_and_against_the_others_best_point():
    from arbitrage.evidence import Point, matched

    ids = [f"p{i}" for i in range(10)]

    def point(label, policy, right, latency):
        return Point(label, policy, None, {i: (k < right, latency) for k, i in enumerate(ids)})

    fast_a, slow_a = point("a1", "a", 5, 1.0), point("a2", "a", 8, 3.0)  # a: 0.5 at 1 s, 0.8 at 3 s
    fast_b, slow_b = point("b1", "b", 5, 2.0), point("b2", "b", 8, 9.0)  # b: 0.5 at 2 s, 0.8 at 9 s
    m = matched([fast_a, slow_a], [fast_b, slow_b], n_boot=50)
    assert m["accuracy"] == pytest.approx(0.8) and m["speedup"] == pytest.approx(3.0)  # not 2.0 at 0.5
    # within a point of b's best accuracy, against b's best point itself (not b's fastest point)
    m = matched([fast_a, slow_a], [fast_b, slow_b], relative_to_b_accuracy=-0.3, n_boot=50)
    assert m["accuracy"] == pytest.approx(0.5) and m["speedup"] == pytest.approx(9.0)
