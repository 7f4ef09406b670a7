"""The test under `arbitrage calibrate`: is a point's accuracy loss against target-only at most epsilon?
Paired binary outcomes (non-inferiority of matched pairs), p-values valid at every n.

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
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .errors import ConfigError

METHODS = ("exact", "hb")


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
