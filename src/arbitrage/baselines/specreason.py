"""A SpecReason-style policy (Pan et al., "SpecReason", 2025): the target itself judges each draft step.

Per step: the draft proposes d_k; the judge (the target, through the `StepJudge` protocol) reads c_k + d_k + a
short judging question and gives a 0-9 score from its next-token log-probs over the digits (one forward pass,
see `arbitrage.target_judge`); the draft step is kept iff score >= tau, else the target regenerates the step.

Costs, as counted in results: the judge pass is its own role, `judge` (its wall time in `judge_s`, its calls in
`judge_calls`); `target_calls` and `target_tokens` stay the steps and tokens the target wrote. Unlike the
router, every step costs a target forward pass over the draft step's tokens (a prefill, so cheaper than writing
them, but not free).
"""

from __future__ import annotations

from ..policies import Decide, Decision, Draft, Judge, Target, ThresholdPolicy
from ..target_judge import JUDGE_QUESTION


class SpecReason(ThresholdPolicy):
    name, needs = "specreason", frozenset({"draft", "target", "judge"})
    threshold_range, default_threshold = (0.0, 9.0), 7.0
    escalates, threshold_ladder = "below", tuple(float(v) for v in range(1, 10))  # the judge's 0-9 score
    summary = "baseline: the target judges the draft step 0-9 and regenerates it below tau"

    def __init__(self, threshold: float | None = None, question: str = JUDGE_QUESTION):
        super().__init__(threshold)
        self.question = question

    def decide(self) -> Decide:
        d = yield Draft()
        s = yield Judge(d, self.question)
        if s >= self.threshold:
            return Decision(d, False, draft=d, scores={"judge": s})
        t = yield Target(speculation=d)
        return Decision(t, True, draft=d, target=t, scores={"judge": s})
