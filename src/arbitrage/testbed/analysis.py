"""The testbed's measurements, computed from results files (nothing here runs a model).

Every step of a result record carries its context (the question and the steps before it), so each proposal
can be re-checked with the *exact* checker whatever PRM the run used (a noisy one included):

- `step_outcomes`: where both models wrote a step from the same context (generate and oracle runs), how often
  both were right, only the target, only the draft, neither. This is the step-difficulty mix of issue 5.
- `wasted_escalations`: of the steps RSD escalated, the fraction where the target's step was no better than
  the draft's it replaced (the paper's "wasted" regenerations: ~60% of rejections on MATH500).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

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


def step_outcomes(records: Sequence[ProblemRecord]) -> dict:
    """Counts and shares of the four outcomes over every step both models wrote (exact checker)."""
    counts = Counter(_outcome(q, prior, d, t) for q, prior, d, t, _ in _pairs(records))
    n = sum(counts.values())
    return {
        "steps": n,
        **{k: counts.get(k, 0) for k in OUTCOMES},
        "shares": {k: round(counts.get(k, 0) / n, 4) if n else None for k in OUTCOMES},
    }


def identical_right_steps(records: Sequence[ProblemRecord]) -> dict:
    """Where both models wrote a step from the same context (an oracle run): of the draft's right steps, how
    many are token for token the target's step (the same text). On a task with one phrasing per step nearly all
    are; on real pairs few are, which is why a step-level check beats token-level verification there."""
    right = identical = 0
    for q, prior, d, t, _ in _pairs(records):
        if check_step(q, prior, d)[0]:
            right += 1
            identical += d == t
    return {
        "right_draft_steps": right,
        "identical_to_target": identical,
        "share": round(identical / right, 4) if right else None,
    }


def wasted_escalations(records: Sequence[ProblemRecord]) -> dict:
    """Of the escalated steps of an RSD (or router) run: how often the target's step was no better than the
    draft's it replaced, by the exact checker. `both_right` are false rejections of a correct draft step;
    `both_wrong` are regenerations the target could not do either."""
    counts: Counter = Counter()
    for q, prior, d, t, step in _pairs(records):
        if step.escalated:
            counts[_outcome(q, prior, d, t)] += 1
    n = sum(counts.values())
    wasted = n - counts.get("target_only", 0)
    return {
        "escalations": n,
        "wasted": wasted,
        "wasted_fraction": round(wasted / n, 4) if n else None,
        **{k: counts.get(k, 0) for k in OUTCOMES},
    }
