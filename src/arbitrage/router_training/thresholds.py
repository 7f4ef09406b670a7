"""Thresholds for target escalation rates, read off recorded steps (`arbitrage router thresholds`).

A router's y_hat and a PRM's scores are on scales of their own (a probe trained on few steps may put every
y_hat within 0.49-0.54), so "tau = 0.5" says little about how often the target will run. A sweep is more
useful when its points sit at chosen escalation rates. From `generate` results (every step with the draft's
proposal and its PRM score, unbalanced) this picks, for each rate r:

* router: about the (1 - r) quantile of y_hat, since the router escalates iff y_hat > tau;
* rsd: about the r quantile of PRM(draft), since RSD escalates iff PRM(draft) < tau;
* confidence / confidence-min: about the r quantile of the draft step's mean / minimum token log-prob;
* glimpse: about the (1 - r) quantile of the entropy of the draft step's first token;
("about": the threshold among the midpoints between distinct values whose share comes closest to r, since tied
values, e.g. a clipped PRM's many exact zeros, make a plain quantile miss the rate by a wide margin)

and reports the rate each tau gives on these steps (ties can move it) and the oracle's own rate (A > 0).
The steps follow the `generate` trajectory, not the router's own, so the rates in a real run are close, not
equal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..registry import registry
from ..types import DEFAULT_SEPARATOR
from .dataset import read_results
from .evaluate import predict


def tau_for_rate(values, rate: float, below: bool, digits: int = 4, bounds: tuple[float, float] | None = None) -> dict:
    """The threshold whose escalation share on `values` comes closest to `rate`, for a policy that escalates iff
    value < tau (`below`) or iff value > tau. Ties matter: a PRM clipped to [0, 1] puts many scores at exactly 0,
    where a plain quantile would escalate nothing; the candidates are midpoints between distinct values."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    u = np.unique(np.round(x, digits))
    cands = np.concatenate([[u[0] - 10**-digits], (u[:-1] + u[1:]) / 2, [u[-1] + 10**-digits]])
    if bounds is not None:  # within the policy's threshold range
        cands = np.clip(cands, *bounds)
    cands = np.unique(np.round(cands, digits))
    shares = np.array([np.mean(x < c) if below else np.mean(x > c) for c in cands])
    best = int(np.argmin(np.abs(shares - rate) + 1e-12 * np.abs(cands)))
    return {"rate": rate, "tau": float(cands[best]), "achieved": float(shares[best])}


def _rates(rates: Sequence[float]) -> list[float]:
    out = [float(r) for r in rates]
    bad = [r for r in out if not 0.0 < r < 1.0]
    if not out or bad:
        raise ConfigError(f"escalation rates must be in (0, 1), got {bad or 'none'}")
    return sorted(set(out))


def rate_thresholds(
    results: Sequence[str],
    rates: Sequence[float],
    router_dir: str | None = None,
    *,
    device: str = "auto",
    batch_size: int = 16,
    digits: int = 4,
) -> dict:
    """{"n_steps", "oracle_rate", "rsd": [{rate, tau, achieved}], "router": [...] (with router_dir)}."""
    rates = _rates(rates)
    examples, sep = read_results(list(results))
    if not examples:
        raise DataError(f"no steps in {', '.join(results)}")
    prm = np.array([e.prm_draft for e in examples])
    out: dict = {
        "sources": [os.path.abspath(p) for p in results],
        "n_steps": len(examples),
        "n_problems": len({e.problem_id for e in examples}),
        "oracle_rate": float(np.mean([e.advantage > 0 for e in examples])),
        "rsd": [],
    }
    ranges = registry().thresholded()
    out["rsd"] = [tau_for_rate(prm, r, below=True, digits=digits, bounds=ranges["rsd"]) for r in rates]
    drafts = [e.draft_step() for e in examples]
    if all(d.logprobs for d in drafts):
        for name, stat in (("confidence", lambda lp: float(np.mean(lp))), ("confidence-min", lambda lp: min(lp))):
            xs = np.array([stat(d.logprobs) for d in drafts])
            out[name] = [tau_for_rate(xs, r, below=True, digits=digits, bounds=ranges.get(name)) for r in rates]
    if all(d.extras.get("entropies") for d in drafts):
        first = np.array([float(d.extras["entropies"][0]) for d in drafts])
        out["glimpse"] = [
            tau_for_rate(first, r, below=False, digits=digits, bounds=ranges.get("glimpse")) for r in rates
        ]
    if router_dir is not None:
        from ..factory import ModelOptions, load_model

        router = load_model(
            "router", router_dir, "router", ModelOptions(device=device, reuse_cache=False), sep or DEFAULT_SEPARATOR
        )
        y = np.array(predict(router, examples, batch_size))
        out["router_dir"] = os.path.abspath(router_dir)
        out["y_hat_range"] = [float(y.min()), float(y.max())]
        out["router"] = [tau_for_rate(y, r, below=False, digits=digits, bounds=ranges["router"]) for r in rates]
    return out


def taus(found: dict, policy: str) -> str:
    """The thresholds found for `policy`, as `arbitrage sweep --thresholds POLICY=...` lists them."""
    return ",".join(f"{t:g}" for t in sorted({p["tau"] for p in found.get(policy) or []}))


POLICIES = ("rsd", "router", "confidence", "confidence-min", "glimpse")


def sweep_args(found: dict) -> str:
    """The `--thresholds` options of `arbitrage sweep` for these points."""
    return " ".join(f"--thresholds {policy}={taus(found, policy)}" for policy in POLICIES if found.get(policy))


def report(found: dict, out_json: str | None = None, log: Callable[[str], None] = print) -> None:
    log(
        f"{found['n_steps']} steps of {found['n_problems']} problems; the oracle (A > 0) escalates "
        f"{found['oracle_rate']:.1%} of them"
    )
    log(f"{'policy':<16}{'rate':>8}{'tau':>10}{'achieved':>10}")
    for policy in POLICIES:
        for p in found.get(policy, []):
            log(f"{policy:<16}{p['rate']:>8.2f}{p['tau']:>10g}{p['achieved']:>10.2f}")
    log(f"sweep: {sweep_args(found)}")
    if out_json:
        os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
        with open(out_json, "w") as f:
            json.dump(found, f, indent=2)
        log(f"-> {out_json}")
