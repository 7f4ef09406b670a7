"""Training-free routers a user would try first, as step policies beside the learned router:

- `confidence` / `confidence-min` (ConfSpec-style, arXiv 2602.18447, in its simplest form): the draft writes the
  step; escalate iff the step's mean (or minimum) token log-prob is below tau. No judge, no training.
- `glimpse` (GlimpRouter, arXiv 2601.05110): the draft writes one token of the step; escalate iff that first
  token's entropy is above tau, decided before the draft writes the rest, so an escalated step wastes one draft
  token, not a whole step; a kept step is continued from the draft's cache.

They read what the draft computes anyway (per-token log-probs and entropies; a served draft reports entropies
estimated from its top log-probs). The recorded score of each step is the statistic itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..errors import ConfigError
from ..policies import Continue, Decide, Decision, Draft, Glimpse, Target, ThresholdPolicy
from ..types import Step


def _logprobs(step: Step) -> list[float]:
    if not step.logprobs:
        if step.n_tokens == 0:
            return [0.0]  # an empty step: nothing the draft was unsure of
        raise ConfigError("this policy reads the draft's per-token log-probs, and the draft returned none")
    return list(step.logprobs)


# 0.001 ... 5, 10: a ladder of log-probs and entropies from rare to frequent escalation (calibrate's default grid)
LOG_LADDER = tuple(m * 10.0**k for k in range(-3, 1) for m in (1, 2, 5)) + (10.0,)


class Confidence(ThresholdPolicy):
    """Escalate iff the draft step's mean token log-prob < tau."""

    name, needs = "confidence", frozenset({"draft", "target"})
    threshold_range, default_threshold = (-30.0, 0.0), -0.5
    escalates, threshold_ladder = "below", tuple(-v for v in LOG_LADDER)  # a token log-prob
    summary = "baseline (ConfSpec-style): escalate iff the draft step's mean token log-prob < tau"
    statistic: Callable[[list[float]], float] = staticmethod(lambda lps: sum(lps) / len(lps))
    score_name = "mean_logprob"

    def decide(self) -> Decide:
        d = yield Draft()
        s = self.statistic(_logprobs(d))
        if s < self.threshold:
            t = yield Target(speculation=d)
            return Decision(t, True, draft=d, target=t, scores={self.score_name: s})
        return Decision(d, False, draft=d, scores={self.score_name: s})


class ConfidenceMin(Confidence):
    """Escalate iff the draft step's least likely token has log-prob < tau."""

    name = "confidence-min"
    default_threshold = -2.0
    summary = "baseline (ConfSpec-style): escalate iff the draft step's minimum token log-prob < tau"
    statistic = staticmethod(lambda lps: min(lps))  # not min itself: its overloads do not narrow to one signature
    score_name = "min_logprob"


class GlimpsePolicy(ThresholdPolicy):
    """GlimpRouter: escalate iff the entropy (nats) of the step's first draft token > tau, after one token."""

    name, needs = "glimpse", frozenset({"draft", "target"})
    threshold_range, default_threshold = (0.0, 20.0), 1.0
    escalates, threshold_ladder = "above", tuple(v for v in LOG_LADDER if v <= 5.0)  # first-token entropy (nats)
    summary = (
        "baseline (GlimpRouter): escalate iff the entropy of the draft step's first token > tau, decided "
        "after that one token"
    )

    def decide(self) -> Decide:
        g = yield Glimpse(1)
        ents = g.extras.get("entropies")
        if not ents:
            if g.n_tokens == 0:
                ents = [0.0]
            else:
                raise ConfigError(
                    "the glimpse policy reads the entropy of the draft's first token, and the draft "
                    "returned none (a served draft needs top log-probs)"
                )
        h = float(ents[0])
        if not math.isfinite(h):
            h = 0.0
        if h > self.threshold:
            t = yield Target(speculation=g)
            return Decision(t, True, draft=g, target=t, scores={"first_token_entropy": h})
        d = g if g.stop != "length" or g.n_tokens < 1 else (yield Continue(g))
        return Decision(d, False, draft=d, scores={"first_token_entropy": h})


POLICIES = (Confidence, ConfidenceMin, GlimpsePolicy)
