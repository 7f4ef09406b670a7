"""`arbitrage calibrate`: Learn-then-Test over per-problem outcomes (arbitrage.calibrate), with scripted
outcomes where the right choice is known, the p-values against direct computations, and the command end to
end on the shipped testbed models (tiny sizes), read back by `run --calibration` and `serve --calibration`."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from arbitrage import calibrate as cal
from arbitrage import noninferiority as ni
from arbitrage.calibrate import NOTHING_CERTIFIABLE, Outcomes, select

# --- scripted outcomes ---------------------------------------------------------------------------------------


def target_outcomes(n: int, wrong: int = 0) -> Outcomes:
    """Target-only right on all but the last `wrong` problems, 1 s each."""
    correct = np.ones(n, dtype=bool)
    if wrong:
        correct[n - wrong :] = False
    return Outcomes("target", None, correct, np.ones(n), np.full(n, 3), np.full(n, 3))


def point(
    policy: str, tau: float, target: Outcomes, losses: int, wins: int = 0, latency: float = 0.5, escalated: int = 1
) -> Outcomes:
    """A point that loses the first `losses` problems target-only solves and wins the first `wins` it does not."""
    correct = target.correct.copy()
    solved = np.flatnonzero(target.correct)
    unsolved = np.flatnonzero(~target.correct)
    correct[solved[:losses]] = False
    correct[unsolved[:wins]] = True
    n = len(target)
    return Outcomes(policy, tau, correct, np.full(n, latency), np.full(n, escalated), np.full(n, 3))


def largest_certified_losses(n: int, eps: float, level: float) -> int:
    """The largest number of losses (no wins) the exact test certifies at `level`."""
    b = 0
    while ni.p_value(b + 1, 0, n, eps) <= level:
        b += 1
    return b


# --- the selection -------------------------------------------------------------------------------------------


def test_a_threshold_just_inside_the_bound_is_picked_and_one_just_outside_is_not():
    n, eps, delta = 400, 0.03, 0.1
    t = target_outcomes(n, wrong=40)
    b = largest_certified_losses(n, eps, delta)
    assert 1 <= b < eps * n  # certifying takes a margin below eps
    assert ni.p_value(b, 0, n, eps) <= delta < ni.p_value(b + 1, 0, n, eps)
    # rsd: a higher tau escalates more, so 0.9 is tested first, then 0.7, then 0.5
    inside = [point("rsd", 0.9, t, 0, latency=0.9), point("rsd", 0.7, t, b, latency=0.6)]
    sel = select(t, inside + [point("rsd", 0.5, t, b + 1, latency=0.3)], eps, delta)
    assert sel.chosen is not None and (sel.chosen.policy, sel.chosen.threshold) == ("rsd", 0.7)
    tests = {x.threshold: x for x in sel.tests}
    assert tests[0.9].certified and tests[0.7].certified and not tests[0.5].certified
    assert tests[0.5].p_value > delta and sel.policies["rsd"]["stopped_at"] == 0.5
    # the same point one loss worse is no longer certified: the safer threshold is chosen
    sel = select(t, [inside[0], point("rsd", 0.7, t, b + 1, latency=0.6)], eps, delta)
    assert (sel.chosen.policy, sel.chosen.threshold) == ("rsd", 0.9)
    # certified iff p <= delta, to the last digit: at delta = its p-value it is, just below it it is not
    worse = [inside[0], point("rsd", 0.7, t, b + 1, latency=0.6)]
    p = ni.p_value(b + 1, 0, n, eps)
    assert select(t, worse, eps, p).chosen.threshold == 0.7
    assert select(t, worse, eps, p * (1 - 1e-9)).chosen.threshold == 0.9


def test_fixed_sequence_stops_at_the_first_failure_in_the_policys_own_order():
    n, eps, delta = 400, 0.03, 0.1
    t = target_outcomes(n, wrong=40)
    # router: a LOWER tau escalates more, so the order is 0.1, 0.5, 0.9; 0.5 fails, and 0.9, which alone would
    # pass and is the cheapest, must then not even be tested
    pts = [
        point("router", 0.1, t, 0, latency=0.9),
        point("router", 0.5, t, 40, latency=0.6),
        point("router", 0.9, t, 0, latency=0.2),
    ]
    sel = select(t, pts, eps, delta)
    assert sel.policies["router"]["order"] == [0.1, 0.5, 0.9]
    by_tau = {x.threshold: x for x in sel.tests}
    assert by_tau[0.1].certified and not by_tau[0.5].certified
    assert by_tau[0.9].p_value is None and not by_tau[0.9].certified  # not tested
    assert (sel.chosen.policy, sel.chosen.threshold) == ("router", 0.1)
    assert sel.policies["router"]["certified"] == [0.1]
    # confidence escalates below tau: its safest tau is the highest
    assert cal.safest_first("confidence", [-0.5, -0.01, -2.0]) == [-0.01, -0.5, -2.0]
    assert cal.safest_first("glimpse", [2.0, 0.5]) == [0.5, 2.0]


def test_the_cheapest_certified_point_wins_across_policies_at_delta_over_the_number_of_policies():
    n, eps, delta = 400, 0.03, 0.1
    t = target_outcomes(n, wrong=40)
    b_half = largest_certified_losses(n, eps, delta / 2)
    b_full = largest_certified_losses(n, eps, delta)
    assert b_full > b_half
    rsd = [point("rsd", 0.9, t, 0, latency=0.8), point("rsd", 0.5, t, b_half, latency=0.5)]
    # certified at delta alone, but not at delta / 2, and the fastest point of all
    router = [point("router", 0.2, t, b_full, latency=0.3)]
    alone = select(t, router, eps, delta)
    assert alone.level == delta and alone.chosen.policy == "router"
    both = select(t, rsd + router, eps, delta)
    assert both.level == pytest.approx(delta / 2)
    assert both.policies["router"]["chosen"] is None
    assert (both.chosen.policy, both.chosen.threshold) == ("rsd", 0.5)  # the cheaper of rsd's two
    # among certified points the choice is the lowest calibration latency, not the last in the order
    rsd_slow_last = [point("rsd", 0.9, t, 0, latency=0.4), point("rsd", 0.5, t, 0, latency=0.7)]
    assert select(t, rsd_slow_last, eps, delta).chosen.threshold == 0.9


def test_wins_count_for_the_point():
    """A point that loses b problems but wins as many is certified where the same losses alone are not."""
    n, eps, delta = 400, 0.03, 0.1
    t = target_outcomes(n, wrong=40)
    b = largest_certified_losses(n, eps, delta) + 3
    assert select(t, [point("rsd", 0.5, t, b)], eps, delta).chosen is None
    assert select(t, [point("rsd", 0.5, t, b, wins=b)], eps, delta).chosen is not None


def test_refuses_when_the_data_cannot_support_the_guarantee():
    # 3 problems: not even a point right wherever target-only is wrong could be certified
    t = target_outcomes(3)
    sel = select(t, [point("rsd", 0.5, t, 0)], 0.01, 0.1)
    assert sel.chosen is None and sel.reason.startswith(NOTHING_CERTIFIABLE)
    assert "whatever the outcomes" in sel.reason
    assert not ni.can_certify(3, 0.01, 0.1) and ni.can_certify(400, 0.01, 0.1)
    # 50 problems, a point identical to target-only: one point of loss needs more problems than that
    t = target_outcomes(50, wrong=5)
    sel = select(t, [point("rsd", 0.5, t, 0)], 0.01, 0.1)
    assert sel.chosen is None and str(ni.min_problems(0.01, 0.1)) in sel.reason
    assert ni.min_problems(0.01, 0.1) > 50
    # and with enough problems the same identical point is certified
    t = target_outcomes(ni.min_problems(0.01, 0.1), wrong=5)
    assert select(t, [point("rsd", 0.5, t, 0)], 0.01, 0.1).chosen is not None


# --- the p-values, against direct computations -----------------------------------------------------------------


def _trinomial(n, p_plus, p_minus):
    out = np.zeros((n + 1, n + 1))
    for b in range(n + 1):
        for c in range(n + 1 - b):
            out[b, c] = (
                math.comb(n, b) * math.comb(n - b, c) * p_plus**b * p_minus**c * (1 - p_plus - p_minus) ** (n - b - c)
            )
    return out


def _z_direct(b, c, n, eps):
    """The score statistic with the constrained MLE found numerically (not from the quadratic)."""
    from scipy.optimize import minimize_scalar

    lo, hi = max(0.0, -eps), (1 - eps) / 2

    def nll(s):
        pp, pm, p0 = s + eps, s, 1 - 2 * s - eps
        return -sum(k * math.log(max(p, 1e-300)) for k, p in ((b, pp), (c, pm), (n - b - c, p0)) if k)

    s = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12}).x
    num = b - c - n * eps
    return 0.0 if num == 0 else num / math.sqrt(n * (2 * s + eps - eps * eps))


def _p_direct(b0, c0, n, eps, grid=40):
    """sup over a grid of the whole null region of P(the monotone hull of {Z <= Z_obs}), by enumeration."""
    z = np.full((n + 1, n + 1), np.inf)
    for b in range(n + 1):
        for c in range(n + 1 - b):
            z[b, c] = _z_direct(b, c, n, eps)
    region = z <= _z_direct(b0, c0, n, eps) + 1e-7
    hull = np.zeros_like(region)
    for b in range(n + 1):
        for c in range(n + 1 - b):
            hull[b, c] = region[b:, : c + 1].any()
    best = 0.0
    for pm in np.linspace(max(0.0, -eps), (1 - eps) / 2, grid):
        for pp in np.linspace(pm + eps, 1 - pm, grid):
            best = max(best, _trinomial(n, pp, pm)[hull].sum())
    return best


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.25])
def test_exact_p_value_against_enumeration_of_the_null(eps):
    n = 10
    for b, c in [(0, 0), (1, 0), (0, 2), (2, 1), (1, 3), (4, 1)]:
        assert float(ni._score_z(b, c, n, eps)) == pytest.approx(_z_direct(b, c, n, eps), abs=1e-5)
        direct = _p_direct(b, c, n, eps)
        p = ni.exact_p_value(b, c, n, eps)
        # an upper bound of the supremum (never below it), and a tight one
        assert direct - 1e-9 <= p <= direct + 0.01, (b, c, p, direct)


def test_the_rejection_region_is_the_monotone_hull(monkeypatch):
    """Every outcome with at most as many losses and at least as many wins as one in {Z <= Z_obs} is in the
    region, even where Z is not monotone (the score statistic is, so this is checked on a made-up table)."""
    n = 6
    rng = np.random.default_rng(0)
    table = rng.normal(size=(n + 1, n + 1))
    table[np.add.outer(np.arange(n + 1), np.arange(n + 1)) > n] = np.inf
    monkeypatch.setattr(ni, "_z_table", lambda n_, eps: table)
    for z_obs in (-1.0, 0.0, 0.7):
        inside = table <= z_obs  # rows c, columns b
        want = [max([b for b in range(n + 1 - c) if inside[: c + 1, b:].any()], default=-1) for c in range(n + 1)]
        assert list(ni._hull_rows(n, 0.1, z_obs)) == want


def test_the_score_statistic_is_monotone():
    """More losses raise Z, more wins lower it: the region {Z <= Z_obs} is its own hull."""
    for n, eps in [(50, 0.0), (100, 0.02), (300, 0.05), (100, -0.3)]:
        z = np.where(np.isfinite(ni._z_table(n, eps)), ni._z_table(n, eps), np.nan)
        assert np.nanmin(np.diff(z, axis=1)) > 0 and np.nanmax(np.diff(z, axis=0)) < 0


def test_exact_p_value_is_valid_on_the_boundary_of_the_null():
    """P(p <= alpha) <= alpha exactly, where H0 is hardest to reject (p_plus - p_minus = eps)."""
    n, eps = 12, 0.1
    p = {(b, c): ni.exact_p_value(b, c, n, eps) for b in range(n + 1) for c in range(n + 1 - b)}
    for p_minus in (0.0, 0.02, 0.1, 0.3):
        probs = _trinomial(n, p_minus + eps, p_minus)
        for alpha in (0.05, 0.1, 0.2):
            size = sum(probs[b, c] for (b, c), v in p.items() if v <= alpha)
            assert size <= alpha + 1e-12, (p_minus, alpha, size)


def test_hb_p_value_against_the_formula():
    def direct(mean, n, bound):
        h1 = (mean * math.log(mean / bound) if mean > 0 else 0) + (1 - mean) * math.log((1 - mean) / (1 - bound))
        hoeffding = math.exp(-n * h1) if mean < bound else 1.0
        k = math.ceil(n * mean - 1e-9)
        bentkus = math.e * sum(math.comb(n, j) * bound**j * (1 - bound) ** (n - j) for j in range(k + 1))
        return min(1.0, hoeffding, bentkus)

    for mean, n, bound in [(0.45, 100, 0.5), (0.5, 200, 0.51), (0.1, 50, 0.3), (0.3, 40, 0.2), (0.495, 300, 0.505)]:
        assert ni.hb_p_value(mean, n, bound) == pytest.approx(direct(mean, n, bound), rel=1e-9)
    # the paired loss mapped to [0, 1]: (loss + 1) / 2 against (eps + 1) / 2
    assert ni.p_value(5, 2, 100, 0.05, "hb") == pytest.approx(direct((0.03 + 1) / 2, 100, 1.05 / 2), rel=1e-9)
    # far more conservative than the exact test on the same counts
    assert ni.p_value(2, 1, 300, 0.03, "hb") > 0.5
    assert ni.p_value(2, 1, 300, 0.03) < 0.01


# --- the command, end to end on the testbed --------------------------------------------------------------------

MODELS = ["--draft", "testbed:draft", "--target", "testbed:target", "--prm", "testbed-checker:0.1:0.1"]
SMALL = ["--max-steps", "6", "--threads", "1", "--device", "cpu", "--quiet"]


def test_calibrate_end_to_end_and_run_and_serve_take_its_choice(tmp_path, capsys, monkeypatch):
    from arbitrage.cli import main

    out = tmp_path / "cal"
    args = [
        "calibrate",
        *MODELS,
        "--data",
        "testbed:validation:12",
        "--policies",
        "rsd",
        "--thresholds",
        "rsd=0.3,0.9",
        *SMALL,
        "--no-plots",
        "--out",
        str(out),
    ]
    assert main(args + ["--max-loss", "0.3", "--delta", "0.2"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "calibration.json").read_text())
    assert report["epsilon"] == 0.3 and report["delta"] == 0.2 and report["n"] == 12
    assert report["method"] == "exact" and report["level_per_policy"] == 0.2
    assert [t["threshold"] for t in report["tests"]] == [0.9, 0.3]  # the safest first
    chosen = report["chosen"]
    assert chosen["policy"] == "rsd" and chosen["threshold"] in (0.3, 0.9)
    assert chosen["p_value"] <= 0.2 and chosen["certified"]
    for key in ("speedup_vs_target", "latency_s_mean_ci", "escalation_rate_ci"):
        lo, hi = chosen[key]["ci95"]
        assert lo <= chosen[key]["value"] <= hi
    assert report["models"]["prm"] == "testbed-checker:0.1:0.1"
    assert f"--calibration {out / 'calibration.json'}" in printed and chosen["run_options"] in printed
    for d in ("target", "rsd-0.3", "rsd-0.9"):  # ordinary sweep points
        assert (out / d / "results.jsonl").exists()

    cal_file = str(out / "calibration.json")
    run_out = tmp_path / "run"
    base = ["run", "--calibration", cal_file, *MODELS, "--data", "testbed:validation:2", *SMALL]
    assert main(base + ["--out", str(run_out)]) == 0
    metrics = json.loads((run_out / "metrics.json").read_text())
    assert (metrics["policy"], metrics["threshold"]) == ("rsd", chosen["threshold"])
    # agreeing flags are fine; contradicting ones are an error naming both
    assert main(base + ["--policy", "rsd", "--threshold", str(chosen["threshold"]), "--out", str(run_out)]) == 0
    capsys.readouterr()
    assert main(base + ["--policy", "router", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--policy router" in err and "rsd" in err and cal_file in err
    other = 0.5 if chosen["threshold"] != 0.5 else 0.7
    assert main(base + ["--threshold", str(other), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"--threshold {other:g}" in err and f"{chosen['threshold']:g}" in err

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    assert main(["serve", "--calibration", cal_file, *MODELS, "--threads", "1", "--device", "cpu"]) == 0
    assert f"default policy rsd(tau={chosen['threshold']:g})" in capsys.readouterr().out
    assert main(["serve", "--calibration", cal_file, "--policy", "glimpse", *MODELS, "--device", "cpu"]) == 2

    # the same points, a loss too small for 12 problems: nothing re-runs, nothing is certified, exit 1, and the
    # file still lists every test
    assert main(args + ["--max-loss", "0.001", "--delta", "0.2"]) == 1
    assert NOTHING_CERTIFIABLE in capsys.readouterr().err
    report = json.loads((out / "calibration.json").read_text())
    assert report["chosen"] is None and len(report["tests"]) == 2 and report["tests"][0]["p_value"] > 0.2
    assert (
        main(
            [
                "run",
                "--calibration",
                cal_file,
                *MODELS,
                "--data",
                "testbed:validation:2",
                *SMALL,
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "certifies no threshold" in capsys.readouterr().err


def test_calibrate_refuses_before_running_when_no_outcome_could_be_certified(tmp_path, capsys):
    from arbitrage.cli import main

    out = tmp_path / "tiny"
    rc = main(
        [
            "calibrate",
            *MODELS,
            "--data",
            "testbed:validation:2",
            "--policies",
            "rsd",
            "--thresholds",
            "rsd=0.5",
            *SMALL,
            "--out",
            str(out),
            "--max-loss",
            "0.01",
        ]
    )
    assert rc == 1
    assert NOTHING_CERTIFIABLE in capsys.readouterr().err
    report = json.loads((out / "calibration.json").read_text())
    assert report["chosen"] is None and report["tests"] == [] and report["n"] == 2
    assert not os.path.exists(out / "target")  # no model ran


def test_default_candidates_and_grids_follow_the_models_given():
    assert cal.default_policies({"draft", "target"}) == ["specreason", "confidence", "confidence-min", "glimpse"]
    with_prm = cal.default_policies({"draft", "target", "prm"})
    assert "rsd" in with_prm and "oracle" not in with_prm and "router" not in with_prm
    assert "router" in cal.default_policies({"draft", "target", "router"})
    assert cal.default_grid("rsd") == [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95]
    assert all(-30 <= v <= 0 for v in cal.default_grid("confidence"))
