"""The testbed's measurements, computed from results files (nothing here runs a model).

Every step of a result record carries its context (the question and the steps before it), so each proposal
can be re-checked with the *exact* checker whatever PRM the run used (a noisy one included):

- `step_outcomes`: where both models wrote a step from the same context (generate and oracle runs), how often
  both were right, only the target, only the draft, neither. This is the step-difficulty mix of issue 5.
- `wasted_escalations`: of the steps RSD escalated, the fraction where the target's step was no better than
  the draft's it replaced (the paper's "wasted" regenerations: ~60% of rejections on MATH500).
- `router_vs_rsd`: for each RSD point, the cheapest router point at least as accurate, with the latency ratio
  and the target-call ratio (the latter does not move with the load on the machine).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from ..records import ProblemRecord, StepRecord
from ..results import read_records  # noqa: F401  (re-exported: the demo reads runs through this module)
from .prm import check_step

OUTCOMES = ("both_right", "target_only", "draft_only", "both_wrong")


def _pairs(records: Iterable[ProblemRecord]) -> Iterable[tuple[str, list[str], str, str, StepRecord]]:
    """(question, earlier accepted step texts, draft text, target text, step record) wherever both wrote."""
    for rec in records:
        prior: list[str] = []
        for step in rec.steps:
            draft, target = step.draft_proposal(), step.target_proposal()
            if draft is not None and target is not None:
                yield rec.question, list(prior), draft.text, target.text, step
            prior.append(step.text)


def _outcome(question: str, prior: list[str], draft: str, target: str) -> str:
    d, t = check_step(question, prior, draft)[0], check_step(question, prior, target)[0]
    return "both_right" if d and t else "target_only" if t else "draft_only" if d else "both_wrong"


def step_outcomes(records: Sequence[dict]) -> dict:
    """Counts and shares of the four outcomes over every step both models wrote (exact checker)."""
    counts = Counter(_outcome(q, prior, d, t) for q, prior, d, t, _ in _pairs(records))
    n = sum(counts.values())
    return {"steps": n, **{k: counts.get(k, 0) for k in OUTCOMES},
            "shares": {k: round(counts.get(k, 0) / n, 4) if n else None for k in OUTCOMES}}


def wasted_escalations(records: Sequence[dict]) -> dict:
    """Of the escalated steps of an RSD (or router) run: how often the target's step was no better than the
    draft's it replaced, by the exact checker. `both_right` are false rejections of a correct draft step;
    `both_wrong` are regenerations the target could not do either."""
    counts: Counter = Counter()
    for q, prior, d, t, step in _pairs(records):
        if step.escalated:
            counts[_outcome(q, prior, d, t)] += 1
    n = sum(counts.values())
    wasted = n - counts.get("target_only", 0)
    return {"escalations": n, "wasted": wasted, "wasted_fraction": round(wasted / n, 4) if n else None,
            **{k: counts.get(k, 0) for k in OUTCOMES}}


def router_vs_rsd(points: Sequence[dict]) -> list[dict]:
    """For each RSD point, the cheapest (lowest mean latency) router point whose accuracy is at least RSD's.

    `speedup` = RSD latency / router latency (> 1: the router is faster at no loss of accuracy);
    `target_call_ratio` = RSD target calls / router target calls. None when no router point gets there."""
    routers = [p for p in points if p["policy"] == "router"]
    out = []
    for r in sorted((p for p in points if p["policy"] == "rsd"), key=lambda p: p["threshold"]):
        good = [p for p in routers if p["accuracy"] >= r["accuracy"] - 1e-9]
        best = min(good, key=lambda p: p["latency_s_mean"]) if good else None
        row = {"rsd_tau": r["threshold"], "rsd_accuracy": r["accuracy"], "rsd_latency_s": r["latency_s_mean"],
               "rsd_escalation_rate": r["escalation_rate"], "router_tau": None, "router_accuracy": None,
               "router_latency_s": None, "router_escalation_rate": None, "speedup": None, "target_call_ratio": None}
        if best is not None:
            row.update(router_tau=best["threshold"], router_accuracy=best["accuracy"],
                       router_latency_s=best["latency_s_mean"], router_escalation_rate=best["escalation_rate"],
                       speedup=round(r["latency_s_mean"] / best["latency_s_mean"], 3)
                       if best["latency_s_mean"] > 0 else None,
                       target_call_ratio=round(r["target_calls"] / best["target_calls"], 3)
                       if best["target_calls"] else None)
        out.append(row)
    return out


def headline(points: Sequence[dict], comparisons: Sequence[dict]) -> dict:
    """The figures issue 5 asks for: the draft/target gap and the router-vs-RSD comparison at the most
    accurate RSD point (ties: the cheaper one)."""
    acc = {p["policy"]: p["accuracy"] for p in points if p["policy"] in ("draft", "target")}
    out: dict = {"draft_accuracy": acc.get("draft"), "target_accuracy": acc.get("target"),
                 "gap": round(acc["target"] - acc["draft"], 4) if len(acc) == 2 else None}
    if comparisons:
        best = max(comparisons, key=lambda c: (c["rsd_accuracy"], -c["rsd_latency_s"]))
        out["router_vs_best_rsd"] = best
        out["router_matches_best_rsd"] = best["router_tau"] is not None
    return out
