"""Choosing a threshold with a guarantee (docs/calibration.md): Learn-then-Test over per-problem outcomes.

Given the per-problem outcomes of target-only and of candidate (policy, tau) points on the same calibration
problems, `select` returns, per policy and overall, the cheapest tau whose accuracy loss against target-only is
certified <= epsilon at level delta:

- the loss of a point on problem i is loss_i = 1[target right] - 1[point right], in {-1, 0, 1}; its risk is
  E[loss] = p_plus - p_minus, with p_plus = P(target right, point wrong) and p_minus = P(point right, target
  wrong);
- each policy's thresholds are tested in a fixed order, from the safest (most escalation) to the cheapest, the
  order following from how the policy uses tau (`Policy.escalates`), never from the data; H0(tau): E[loss] > epsilon is
  tested with a valid p-value, and the sequence stops at the first tau whose H0 is not rejected at the policy's
  level: every tau before it is certified (fixed-sequence testing controls the family-wise error at that level);
- with K candidate policies each sequence runs at delta / K (Bonferroni), so that with probability >= 1 - delta
  over the draw of the calibration problems *every* certified point of every policy has risk <= epsilon, and
  the cheapest of them (lowest mean latency on the calibration problems) may be chosen.

The p-values (the exact unconditional test, the default, and Hoeffding-Bentkus) are in `noninferiority`.

Nothing here runs a model: `Outcomes` holds each point's per-problem correctness, latency and escalations, read
from results files (`Outcomes.of`) or scripted (tests, bench/calibration_study.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError
from .noninferiority import METHODS, can_certify, min_problems, p_value, upper_bound

NOTHING_CERTIFIABLE = "no threshold certifiable: use target-only or a larger calibration set"

# How each thresholded policy uses tau, its default grid and whether it is a default candidate are declared by the
# policy itself (Policy.escalates, threshold_ladder, calibrate_by_default). "below": it escalates when its
# statistic is below tau, so a higher tau escalates more (safer); "above": a lower tau is safer. Default grids
# (where no --thresholds or training-side rates are given) are fixed ladders, chosen without looking at any data.


# --- which thresholds, in which order --------------------------------------------------------------------------


def direction(policy: str) -> str:
    from .registry import registry

    cls = registry().policies.get(policy)
    found = getattr(cls, "escalates", None) if cls is not None else None
    if found not in ("below", "above"):
        raise ConfigError(
            f"policy {policy!r}: calibrate does not know whether a higher tau escalates more (give "
            f"its class escalates = 'below' or 'above')"
        )
    return found


def safest_first(policy: str, thresholds: Iterable[float]) -> list[float]:
    """The thresholds in the order they are tested: the most escalating (safest) first, the cheapest last."""
    return sorted({float(t) for t in thresholds}, reverse=direction(policy) == "below")


def default_grid(policy: str) -> list[float]:
    """A fixed ladder over the policy's threshold range (its `threshold_ladder`; without one, ten evenly spaced
    values inside its range), clipped to the range."""
    from .registry import registry

    lo, hi = registry().thresholded()[policy]
    ladder = list(registry().policy(policy).threshold_ladder) or [lo + (hi - lo) * (i + 0.5) / 10 for i in range(10)]
    return sorted({float(v) for v in ladder if lo <= v <= hi})


def default_policies(roles: Iterable[str]) -> list[str]:
    """Every thresholded policy the models given (`roles`) allow, in the registry's order (the oracle left out);
    the judge is the target itself."""
    from .registry import registry

    have = set(roles) | ({"judge"} if "target" in set(roles) else set())
    reg = registry()
    return [
        name
        for name in reg.thresholded()
        if reg.policies[name].calibrate_by_default and reg.policies[name].needs <= have
    ]


# --- outcomes --------------------------------------------------------------------------------------------------


@dataclass
class Outcomes:
    """One point's per-problem outcomes on the calibration problems, in a fixed problem order shared by every
    point compared with it."""

    policy: str
    threshold: float | None
    correct: np.ndarray  # bool per problem
    latency: np.ndarray  # seconds per problem
    escalated: np.ndarray | None = None  # escalated steps per problem
    steps: np.ndarray | None = None  # steps per problem
    label: str = ""

    def __post_init__(self):
        self.correct = np.asarray(self.correct, dtype=bool)
        self.latency = np.asarray(self.latency, dtype=np.float64)
        n = len(self.correct)
        self.escalated = np.zeros(n, dtype=np.int64) if self.escalated is None else np.asarray(self.escalated)
        self.steps = np.ones(n, dtype=np.int64) if self.steps is None else np.asarray(self.steps)
        if not (len(self.latency) == len(self.escalated) == len(self.steps) == n):
            raise ValueError("per-problem arrays of different lengths")
        if not self.label:
            self.label = self.policy if self.threshold is None else f"{self.policy}@{self.threshold:g}"

    @classmethod
    def of(
        cls,
        records: Sequence,
        ids: Sequence[str],
        policy: str | None = None,
        threshold: float | None = None,
        label: str = "",
    ) -> Outcomes:
        """From a point's records (ProblemRecord), in the order of `ids` (every id must be there)."""
        by_id = {r.id: r for r in records}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ConfigError(f"{label or policy}: problem {missing[0]!r} has no record ({len(missing)} missing)")
        rs = [by_id[i] for i in ids]
        first = rs[0] if rs else None
        return cls(
            policy or (first.policy if first else "?"),
            threshold if threshold is not None or first is None else first.threshold,
            np.asarray([bool(r.correct) for r in rs]),
            np.asarray([float(r.latency_s) for r in rs]),
            np.asarray([sum(bool(s.escalated) for s in r.steps) for r in rs]),
            np.asarray([len(r.steps) for r in rs]),
            label,
        )

    def __len__(self) -> int:
        return len(self.correct)

    def take(self, idx) -> Outcomes:
        assert self.escalated is not None and self.steps is not None  # filled in by __post_init__
        return Outcomes(
            self.policy,
            self.threshold,
            self.correct[idx],
            self.latency[idx],
            self.escalated[idx],
            self.steps[idx],
            self.label,
        )

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self) else 0.0

    @property
    def latency_mean(self) -> float:
        return float(self.latency.mean()) if len(self) else 0.0

    @property
    def escalation_rate(self) -> float:
        assert self.escalated is not None and self.steps is not None  # filled in by __post_init__
        steps = int(self.steps.sum())
        return float(self.escalated.sum()) / steps if steps else 0.0


def discordant(target: Outcomes, point: Outcomes) -> tuple[int, int]:
    """(n_plus, n_minus): problems only the target solved, and problems only the point solved."""
    if len(target) != len(point):
        raise ValueError("target and point outcomes on different numbers of problems")
    return (int(np.sum(target.correct & ~point.correct)), int(np.sum(point.correct & ~target.correct)))


# --- the selection ---------------------------------------------------------------------------------------------


@dataclass
class Test:
    policy: str
    threshold: float
    label: str
    n: int
    n_plus: int
    n_minus: int
    loss: float  # mean paired loss on the calibration problems
    accuracy: float
    latency_s_mean: float
    escalation_rate: float
    level: float  # the policy's share of delta
    p_value: float | None  # None: not tested (the sequence stopped before it)
    certified: bool = False
    bound: float | None = None  # the smallest epsilon certified at `level` (with bounds=True)

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Selection:
    epsilon: float
    delta: float
    method: str
    n: int
    level: float  # delta / number of policies
    min_problems: int | None  # below this n nothing can be certified
    target: dict
    policies: dict[str, dict] = field(default_factory=dict)  # per policy: order, tests, certified, chosen
    tests: list[Test] = field(default_factory=list)  # every candidate's test, policy by policy, in order
    chosen: Test | None = None
    reason: str | None = None

    def to_json(self) -> dict:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "method": self.method,
            "n": self.n,
            "level_per_policy": self.level,
            "min_problems": self.min_problems,
            "target": self.target,
            "chosen": self.chosen.to_json() if self.chosen else None,
            "reason": self.reason,
            "policies": {p: {**v, "tests": [t.to_json() for t in v["tests"]]} for p, v in self.policies.items()},
            "tests": [t.to_json() for t in self.tests],
        }


def _threshold(point: Outcomes) -> float:
    assert point.threshold is not None  # a candidate point (select refuses one without a threshold)
    return float(point.threshold)


def fixed_sequence(
    target: Outcomes,
    ordered: Sequence[Outcomes],
    epsilon: float,
    level: float,
    method: str = "exact",
    bounds: bool = False,
) -> list[Test]:
    """Test H0: E[loss] > epsilon for each point in the order given (safest first) at `level`, stopping at the
    first not rejected: the points before it are certified; those after it are not tested."""
    tests, going = [], True
    n = len(target)
    for pt in ordered:
        b, c = discordant(target, pt)
        t = Test(
            pt.policy,
            _threshold(pt),
            pt.label,
            n,
            b,
            c,
            (b - c) / n if n else 0.0,
            pt.accuracy,
            pt.latency_mean,
            pt.escalation_rate,
            level,
            None,
        )
        if going:
            t.p_value = p_value(b, c, n, epsilon, method)
            t.certified = t.p_value <= level
            going = t.certified
        if bounds:
            t.bound = upper_bound(b, c, n, level, method)
        tests.append(t)
    return tests


def select(
    target: Outcomes,
    candidates: Sequence[Outcomes],
    epsilon: float,
    delta: float,
    method: str = "exact",
    bounds: bool = False,
) -> Selection:
    """Learn-then-Test: per policy, fixed-sequence testing along its thresholds from the safest to the cheapest at
    delta / (number of policies); the cheapest certified point per policy (lowest mean calibration latency) and
    overall. With `bounds`, each test also reports the smallest epsilon it would certify."""
    if not 0 < delta < 1:
        raise ConfigError(f"--delta must lie in (0, 1), got {delta:g}")
    if not 0 <= epsilon < 1:
        raise ConfigError(f"--max-loss must lie in [0, 1), got {epsilon:g}")
    if method not in METHODS:
        raise ConfigError(f"unknown p-value method {method!r}; choose from {', '.join(METHODS)}")
    by_policy: dict[str, list[Outcomes]] = {}
    for c in candidates:
        if c.threshold is None:
            raise ConfigError(f"candidate {c.label} has no threshold")
        if len(c) != len(target):
            raise ConfigError(f"candidate {c.label} has {len(c)} problems, target-only {len(target)}")
        by_policy.setdefault(c.policy, []).append(c)
    n = len(target)
    level = delta / max(1, len(by_policy))
    sel = Selection(
        epsilon,
        delta,
        method,
        n,
        level,
        min_problems(epsilon, level, method) if epsilon > 0 else None,
        {"accuracy": target.accuracy, "latency_s_mean": target.latency_mean, "escalation_rate": target.escalation_rate},
    )
    for policy, points in by_policy.items():
        order = safest_first(policy, [_threshold(p) for p in points])
        if len(order) != len(points):
            raise ConfigError(f"policy {policy}: a threshold is given twice")
        ordered = sorted(points, key=lambda p: order.index(_threshold(p)))
        tests = fixed_sequence(target, ordered, epsilon, level, method, bounds)
        certified = [t for t in tests if t.certified]
        best = min(certified, key=lambda t: (t.latency_s_mean, order.index(t.threshold))) if certified else None
        sel.policies[policy] = {
            "order": order,
            "tests": tests,
            "certified": [t.threshold for t in certified],
            "chosen": best.threshold if best else None,
            "stopped_at": next((t.threshold for t in tests if t.p_value is not None and not t.certified), None),
        }
        sel.tests += tests
        if best is not None and (sel.chosen is None or best.latency_s_mean < sel.chosen.latency_s_mean):
            sel.chosen = best
    if sel.chosen is None:
        sel.reason = NOTHING_CERTIFIABLE
        if not can_certify(n, epsilon, level, method):
            sel.reason += (
                f" ({n} calibration problems cannot certify a loss <= {epsilon:g} at level {level:g} "
                f"whatever the outcomes)"
            )
        elif sel.min_problems is None or n < sel.min_problems:
            sel.reason += (
                f" (a point as accurate as target-only on every one of the {n} calibration problems "
                f"would not be certified at level {level:g}: that takes at least "
                f"{sel.min_problems or 'more than 100000'} problems)"
            )
    return sel


# --- calibration.json, read back by `run` and `serve` --------------------------------------------------------


def read_calibration(path: str) -> dict:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            cal = json.load(f)
    except OSError as exc:
        raise ConfigError(f"--calibration {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ConfigError(f"--calibration {path}: not valid JSON ({exc})") from None
    if not isinstance(cal, dict) or "chosen" not in cal:
        raise ConfigError(f"--calibration {path}: not a calibration file (`arbitrage calibrate` writes one)")
    return cal


def chosen_from_file(
    path: str, policy: str | None, threshold: float | None, models: dict | None = None
) -> tuple[str, float]:
    """The policy and threshold `arbitrage calibrate` chose in `path`; an explicit `policy` or `threshold` that
    contradicts them is an error naming both. Models other than those calibrated get a warning (the guarantee
    was established with those)."""
    import sys

    cal = read_calibration(path)
    chosen = cal.get("chosen")
    if not chosen:
        raise ConfigError(f"--calibration {path} certifies no threshold ({cal.get('reason') or NOTHING_CERTIFIABLE})")
    try:
        cal_policy, cal_tau = str(chosen["policy"]), float(chosen["threshold"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"--calibration {path}: its `chosen` entry has no policy and threshold") from None
    if policy is not None and policy != cal_policy:
        raise ConfigError(
            f"--policy {policy} contradicts --calibration {path}, which chose policy {cal_policy} "
            f"at threshold {cal_tau:g}",
            "policy",
        )
    if threshold is not None and not math.isclose(float(threshold), cal_tau, rel_tol=1e-12, abs_tol=1e-12):
        raise ConfigError(
            f"--threshold {float(threshold):g} contradicts --calibration {path}, which chose "
            f"threshold {cal_tau:g} for policy {cal_policy}",
            "threshold",
        )
    if models is not None:
        from .registry import registry

        cls = registry().policies.get(cal_policy)
        roles = sorted((cls.needs if cls is not None else set()) - {"judge"})
        calibrated = cal.get("models") or {}
        differ = [r for r in roles if calibrated.get(r) and models.get(r) and calibrated[r] != models[r]]
        if differ:
            print(
                f"arbitrage: warning: --calibration {path} was established with other models ("
                + ", ".join(f"{r}: {calibrated[r]} there, {models[r]} here" for r in differ)
                + "); its guarantee holds only for those",
                file=sys.stderr,
            )
    return cal_policy, cal_tau
