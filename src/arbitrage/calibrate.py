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

Two p-values (`METHODS`):

- `exact` (the default): an exact unconditional test for paired binary outcomes (non-inferiority of matched
  pairs). The statistic is the score statistic Z = (b - c - n eps) / sqrt(n (2 s~ + eps - eps^2)), b and c the
  counts of the two kinds of discordant problem and s~ the maximum-likelihood p_minus under p_plus - p_minus =
  eps; the rejection region of an observation is the monotone hull of {Z <= Z_obs} (every outcome with at most
  as many losses and at least as many wins as one in it), and the p-value is the supremum of its probability
  over H0. A monotone region's probability falls as p_plus grows and rises with p_minus, so the supremum lies
  on the boundary p_plus = p_minus + eps, and over a piece [s_a, s_b] of that boundary it is at most the
  probability at (p_plus, p_minus) = (s_a + eps, s_b): the p-value returned is the largest of these corner
  probabilities over a fine partition, an upper bound of the supremum, hence valid at every n (no asymptotics).
  It uses the fact that most problems are concordant: its bound tightens with the number of discordant problems,
  not with n alone.
- `hb`: Hoeffding-Bentkus (Learn-then-Test's default) on the loss mapped to [0, 1] by (loss + 1) / 2, the bound
  mapped to (eps + 1) / 2. Valid for any bounded loss, but it cannot use the loss's low variance (a mapped loss
  of 1/2 on every concordant problem), so it needs roughly ten times the problems.

Nothing here runs a model: `Outcomes` holds each point's per-problem correctness, latency and escalations, read
from results files (`Outcomes.of`) or scripted (tests, bench/calibration_study.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .errors import ConfigError

METHODS = ("exact", "hb")
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


# --- p-values --------------------------------------------------------------------------------------------------


def _kl(a: float, b: float) -> float:
    """KL(Bernoulli(a) || Bernoulli(b))."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def hb_p_value(mean: float, n: int, bound: float) -> float:
    """Hoeffding-Bentkus p-value (Bates et al. 2021; Angelopoulos et al. 2021) for H0: E[X] > bound, from the
    mean of n i.i.d. losses X in [0, 1]: min(exp(-n KL(min(mean, bound) || bound)), e P(Binom(n, bound) <=
    ceil(n mean)))."""
    from scipy.stats import binom

    if n < 1:
        return 1.0
    if bound <= 0:
        return 1.0
    if bound >= 1:
        return 0.0
    hoeffding = math.exp(-n * _kl(min(mean, bound), bound))
    bentkus = math.e * float(binom.cdf(math.ceil(n * mean - 1e-9), n, bound))
    return min(1.0, hoeffding, bentkus)


def _score_z(b, c, n: int, eps: float):
    """The score statistic of H0: p_plus - p_minus = eps from b losses and c wins in n paired problems."""
    b = np.asarray(b, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    a = n - b - c
    lo, hi = max(0.0, -eps), (1.0 - eps) / 2
    # the constrained MLE of p_minus: the larger root of -2n s^2 + B s + C (d/ds of the log-likelihood, times
    # s (s + eps) (1 - 2 s - eps) > 0)
    B = b * (1 - eps) + c * (1 - 3 * eps) - 2 * a * eps
    C = c * eps * (1 - eps)
    s = (B + np.sqrt(np.maximum(B * B + 8 * n * C, 0.0))) / (4 * n)
    s = np.clip(s, lo, hi)
    var = n * (2 * s + eps - eps * eps)
    num = b - c - n * eps
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(num == 0, 0.0, num / np.sqrt(np.maximum(var, 1e-300)))
    return z


@lru_cache(maxsize=64)
def _z_table(n: int, eps: float) -> np.ndarray:
    """Z for every (b, c) with b + c <= n (rows c, columns b; +inf where b + c > n)."""
    b = np.arange(n + 1)[None, :]
    c = np.arange(n + 1)[:, None]
    z = _score_z(b, c, n, eps)
    z = np.where(b + c <= n, z, np.inf)
    z.setflags(write=False)
    return z


def _hull_rows(n: int, eps: float, z_obs: float) -> np.ndarray:
    """h[c]: the largest b in the monotone hull of {Z <= z_obs} at c wins (-1 where none): (b, c) is in the hull
    iff some (b', c') with b' >= b, c' <= c has Z <= z_obs."""
    z = _z_table(n, eps) if n <= 2000 else None
    tol = 1e-9 * max(1.0, abs(z_obs))
    m = np.full(n + 1, -1, dtype=np.int64)
    b = np.arange(n + 1)[None, :]
    for start in range(0, n + 1, 256):
        c = np.arange(start, min(start + 256, n + 1))[:, None]
        block = z[start : start + 256] if z is not None else np.where(b + c <= n, _score_z(b, c, n, eps), np.inf)
        ok = block <= z_obs + tol
        m[start : start + len(ok)] = np.where(ok.any(axis=1), n - np.argmax(ok[:, ::-1], axis=1), -1)
    h = np.maximum.accumulate(m)
    return np.minimum(h, n - np.arange(n + 1))


def _boundary_grid(eps: float, pieces: int) -> np.ndarray:
    lo, hi = max(0.0, -eps), (1.0 - eps) / 2
    return lo + (hi - lo) * (np.arange(pieces + 1) / pieces) ** 2  # denser near lo, where tails change fastest


def _region_probability(h: np.ndarray, n: int, p_plus: np.ndarray, p_minus: np.ndarray) -> np.ndarray:
    """P(b <= h[c]) for trinomial(n; p_plus, p_minus) counts (b losses, c wins), for each (p_plus, p_minus):
    sum over c of Binom(c; n, p_minus) * P(Binom(n - c, p_plus / (1 - p_minus)) <= h[c])."""
    from scipy.stats import binom

    c = np.arange(n + 1)[None, :]
    pm = p_minus[:, None]
    q = np.clip(p_plus[:, None] / np.maximum(1 - pm, 1e-300), 0.0, 1.0)
    cdf = np.where(h[None, :] >= 0, binom.cdf(h[None, :], n - c, q), 0.0)
    return np.sum(binom.pmf(c, n, pm) * cdf, axis=1)


def exact_p_value(n_plus: int, n_minus: int, n: int, epsilon: float, pieces: int = 400) -> float:
    """p-value of H0: p_plus - p_minus > epsilon (risk of the paired loss above epsilon) from n_plus losses
    (target right, point wrong) and n_minus wins (point right, target wrong) in n problems: an upper bound of
    sup over H0 of P(the monotone hull of {Z <= Z_obs}) (see the module's docstring)."""
    n_plus, n_minus, n = int(n_plus), int(n_minus), int(n)
    if n < 1:
        return 1.0
    if not (0 <= n_plus and 0 <= n_minus and n_plus + n_minus <= n):
        raise ValueError(f"counts b={n_plus}, c={n_minus} do not fit n={n}")
    if not -1.0 < epsilon < 1.0:
        raise ValueError("epsilon must lie in (-1, 1)")
    eps = float(epsilon)
    z_obs = float(_score_z(n_plus, n_minus, n, eps))
    h = _hull_rows(n, eps, z_obs)
    s = _boundary_grid(eps, pieces)
    sa, sb = s[:-1], s[1:]
    probs = _region_probability(h, n, sa + eps, sb)
    return float(min(1.0, max(0.0, probs.max())))


@lru_cache(maxsize=200_000)
def _cached_exact(n_plus: int, n_minus: int, n: int, epsilon: float) -> float:
    return exact_p_value(n_plus, n_minus, n, epsilon)


def p_value(n_plus: int, n_minus: int, n: int, epsilon: float, method: str = "exact") -> float:
    """A valid p-value of H0: E[loss] > epsilon for the paired loss (n_plus problems at +1, n_minus at -1, the rest
    at 0)."""
    if method == "exact":
        return _cached_exact(int(n_plus), int(n_minus), int(n), float(epsilon))
    if method == "hb":
        mean = (n_plus - n_minus) / n if n else 0.0
        return hb_p_value((mean + 1) / 2, n, (epsilon + 1) / 2)
    raise ConfigError(f"unknown p-value method {method!r}; choose from {', '.join(METHODS)}")


def upper_bound(n_plus: int, n_minus: int, n: int, level: float, method: str = "exact", tol: float = 1e-4) -> float:
    """The smallest epsilon the test certifies at `level` for these counts (bisection; a summary for reports,
    not used by the selection)."""
    lo, hi = -0.999, 0.999
    if p_value(n_plus, n_minus, n, hi, method) > level:
        return 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if p_value(n_plus, n_minus, n, round(mid, 6), method) <= level:
            hi = mid
        else:
            lo = mid
    return hi


def can_certify(n: int, epsilon: float, level: float, method: str = "exact") -> bool:
    """Whether n calibration problems could certify anything at all: a point right on every problem where
    target-only is wrong (and wrong nowhere else) is the strongest evidence n problems can give."""
    return n >= 1 and p_value(0, n, n, epsilon, method) <= level


def min_problems(epsilon: float, level: float, method: str = "exact", cap: int = 100_000) -> int | None:
    """The fewest calibration problems at which a point that agrees with target-only on every problem would be
    certified at `level` (a point that also wins some problems needs fewer); None when more than `cap`."""

    def ok(n: int) -> bool:
        return p_value(0, 0, n, epsilon, method) <= level

    if epsilon <= 0:
        return None
    hi = 1
    while not ok(hi):
        hi *= 2
        if hi > cap:
            return None
    lo = hi // 2  # not ok (or 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


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
