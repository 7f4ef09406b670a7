"""A SpecReason-style policy (Pan et al., "SpecReason", 2025): the target itself judges each draft step.

Per step: the draft proposes d_k; the target reads c_k + d_k + a short judging question and gives a 0-9
score from its next-token log-probs over the digits (one forward pass, see `arbitrage.judge`); the draft
step is kept iff score >= tau, else the target regenerates the step from c_k.

Costs, as counted in results: the judge pass runs on the target, so its wall time is in `target_s`; it is
counted in `judge_calls`, not in `target_calls`, which (as for rsd and router) counts the steps the target
wrote, and `target_tokens` stays the tokens the target wrote. Unlike the router, every step costs a target
forward pass over the draft step's tokens (a prefill, so cheaper than writing them, but not free).
"""

from __future__ import annotations

from ..judge import JUDGE_QUESTION, Judge
from ..policies import Decide, Decision, Draft, Policy, Target


class SpecReason(Policy):
    name, needs = "specreason", frozenset({"draft", "target"})

    def __init__(self, threshold: float, question: str = JUDGE_QUESTION):
        self.threshold, self.question = threshold, question

    def decide(self) -> Decide:
        d = yield Draft()
        s = yield Judge(d, self.question)
        if s >= self.threshold:
            return Decision(d, False, draft=d, scores={"judge": s})
        t = yield Target()
        return Decision(t, True, draft=d, target=t, scores={"judge": s})
