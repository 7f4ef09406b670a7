"""The record schema: what a run writes for every step and every problem, and what everything downstream
(metrics, sweep reports, router data, the testbed analysis) reads back.

One line of `results.jsonl` is one `ProblemRecord` as JSON; its `steps` are `StepRecord`s, each with the step
that was kept and, where another proposal was written, that proposal (`draft` / `target`, a `Proposal`). The
engine and the assisted baseline both build these classes, so a field is named in one place only. Reading
validates the types and names the file, line and field of anything malformed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .errors import DataError
from .types import AUTHORS, STOP_REASONS, Author, Step, StopReason

# Per-token features a proposal may carry (router training reads them; kept only where asked for).
FEATURES = ("logprobs", "entropies", "last_hidden")
# What target-written steps reused of the draft's work (backends/speculative.py), summed per problem: the rejected
# proposal's tokens verified and kept, the target's forward passes, the draft's tokens proposed inside the step
# and accepted, and the tokens the target wrote itself.
SPECULATION_COUNTS = (
    "spec_proposed",
    "spec_kept",
    "spec_target_forwards",
    "spec_draft_speculated",
    "spec_draft_accepted",
    "spec_target_written",
)
COUNTS = (
    "draft_tokens_accepted",
    "draft_tokens_discarded",
    "target_tokens",
    "target_calls",
    "draft_calls",
    "escalated_steps",
    "judge_calls",
) + SPECULATION_COUNTS


def _fail(where: str, fld: str, msg: str) -> NoReturn:
    raise DataError(f"{where}: {fld}: {msg}")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class Proposal:
    """A step one model wrote, kept or not: its text, why it stopped, its length and (optionally) features."""

    text: str
    stop: StopReason = "separator"
    n_tokens: int = 0
    logprobs: list[float] | None = None
    entropies: list[float] | None = None
    last_hidden: list[float] | None = None

    @classmethod
    def of(cls, step: Step, features: bool = False) -> Proposal:
        p = cls(step.text, step.stop, step.n_tokens)
        if features:
            p.logprobs = [round(x, 5) for x in step.logprobs] if step.logprobs is not None else None
            for k in ("entropies", "last_hidden"):
                if step.extras.get(k) is not None:
                    setattr(p, k, [round(x, 5) for x in step.extras[k]])
        return p

    def to_step(self, author: Author = "draft") -> Step:
        """The Step as the engine handed it on (features in `extras`, where routers read them)."""
        extras = {k: getattr(self, k) for k in ("entropies", "last_hidden") if getattr(self, k) is not None}
        return Step(
            author=author,
            text=self.text,
            stop=self.stop,
            n_tokens=int(self.n_tokens or len(self.logprobs or [])),
            logprobs=self.logprobs,
            extras=extras,
        )

    def to_json(self) -> dict:
        d: dict[str, Any] = {"text": self.text, "stop": self.stop, "n_tokens": self.n_tokens}
        d.update({k: getattr(self, k) for k in FEATURES if getattr(self, k) is not None})
        return d

    @classmethod
    def from_json(cls, d: Any, where: str, fld: str) -> Proposal:
        if not isinstance(d, dict):
            _fail(where, fld, "expected an object with the step's text")
        if not isinstance(d.get("text"), str):
            _fail(where, f"{fld}.text", "missing or not a string")
        stop = d.get("stop", "separator")
        if stop not in STOP_REASONS:
            _fail(where, f"{fld}.stop", f"{stop!r} is not one of {STOP_REASONS}")
        feats = {}
        for k in FEATURES:
            v = d.get(k)
            if v is not None and not (isinstance(v, list) and all(_number(x) for x in v)):
                _fail(where, f"{fld}.{k}", "expected a list of finite numbers")
            feats[k] = v
        n = d.get("n_tokens") or len(feats["logprobs"] or [])
        return cls(d["text"], stop, int(n), **feats)


@dataclass
class StepRecord:
    """One accepted step: who wrote it, whether the policy escalated, the scores it saw, the proposal(s) not
    kept, how many draft tokens were thrown away, and the seconds each model spent on this step."""

    index: int
    author: Author
    text: str
    stop: StopReason
    n_tokens: int
    escalated: bool
    scores: dict = field(default_factory=dict)  # prm_draft, prm_target, advantage, router, judge, ...
    draft: Proposal | None = None  # the draft's proposal, when it is not the kept step
    target: Proposal | None = None  # the target's step, when it is not the kept step
    seconds: dict = field(default_factory=dict)
    discarded_draft_tokens: int = 0
    target_samples: list[Proposal] | None = None  # extra target samples (generate --target-samples)
    # How the target's step reused the draft's work (proposed, kept, target_forwards, draft_speculated,
    # draft_accepted, target_written), when it was written with speculation.
    speculation: dict | None = None

    def to_step(self) -> Step:
        return Step(author=self.author, text=self.text, stop=self.stop, n_tokens=self.n_tokens)

    def proposal(self, author: str) -> Proposal | None:
        """`author`'s ("draft" or "target") proposal at this step: recorded apart, or the kept step itself when
        that model wrote it; None when it wrote nothing here."""
        recorded = self.draft if author == "draft" else self.target
        if recorded is not None:
            return recorded
        if self.author == author:
            return Proposal(self.text, self.stop, self.n_tokens)
        return None

    def draft_proposal(self) -> Proposal | None:
        return self.proposal("draft")

    def target_proposal(self) -> Proposal | None:
        return self.proposal("target")

    def to_json(self) -> dict:
        d: dict[str, Any] = {
            "index": self.index,
            "author": self.author,
            "text": self.text,
            "stop": self.stop,
            "n_tokens": self.n_tokens,
            "escalated": self.escalated,
            "scores": self.scores,
            "draft": self.draft.to_json() if self.draft is not None else None,
            "target": self.target.to_json() if self.target is not None else None,
            "seconds": self.seconds,
            "discarded_draft_tokens": self.discarded_draft_tokens,
        }
        if self.target_samples is not None:
            d["target_samples"] = [p.to_json() for p in self.target_samples]
        if self.speculation is not None:
            d["speculation"] = self.speculation
        return d

    @classmethod
    def from_json(cls, s: Any, where: str, fld: str) -> StepRecord:
        if not isinstance(s, dict):
            _fail(where, fld, "expected an object")
        if s.get("author") not in AUTHORS:
            _fail(where, f"{fld}.author", f"{s.get('author')!r} is not one of {AUTHORS}")
        if not isinstance(s.get("text"), str):
            _fail(where, f"{fld}.text", "missing or not a string")
        stop = s.get("stop", "separator")
        if stop not in STOP_REASONS:
            _fail(where, f"{fld}.stop", f"{stop!r} is not one of {STOP_REASONS}")
        scores = s.get("scores", {})
        if not isinstance(scores, dict):
            _fail(where, f"{fld}.scores", "not an object")
        for k, v in scores.items():
            if v is not None and not _number(v) and not isinstance(v, list):
                _fail(where, f"{fld}.scores.{k}", "not a finite number")
        draft = Proposal.from_json(s["draft"], where, f"{fld}.draft") if s.get("draft") is not None else None
        target = Proposal.from_json(s["target"], where, f"{fld}.target") if s.get("target") is not None else None
        samples = s.get("target_samples")
        if samples is not None:
            if not isinstance(samples, list):
                _fail(where, f"{fld}.target_samples", "not a list")
            samples = [Proposal.from_json(x, where, f"{fld}.target_samples[{i}]") for i, x in enumerate(samples)]
        spec = s.get("speculation")
        if spec is not None and not (isinstance(spec, dict) and all(_number(v) for v in spec.values())):
            _fail(where, f"{fld}.speculation", "expected an object of counts")
        return cls(
            index=int(s.get("index", 0)),
            author=s["author"],
            text=s["text"],
            stop=stop,
            n_tokens=int(s.get("n_tokens") or 0),
            escalated=bool(s.get("escalated", False)),
            scores=dict(scores),
            draft=draft,
            target=target,
            seconds=dict(s.get("seconds") or {}),
            discarded_draft_tokens=int(s.get("discarded_draft_tokens") or 0),
            target_samples=samples,
            speculation=spec,
        )


@dataclass
class ProblemRecord:
    """One finished problem, graded: one line of results.jsonl."""

    id: str
    question: str
    gold: str | None
    prediction: str | None
    correct: bool
    grade_reason: str
    policy: str
    threshold: float | None
    finish: str
    latency_s: float
    seconds: dict
    counts: dict
    solution: str
    steps: list[StepRecord]

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def count(self, key: str) -> int:
        return int(self.counts.get(key, 0))

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "question": self.question,
            "gold": self.gold,
            "prediction": self.prediction,
            "correct": bool(self.correct),
            "grade_reason": self.grade_reason,
            "policy": self.policy,
            "threshold": self.threshold,
            "finish": self.finish,
            "n_steps": len(self.steps),
            "latency_s": round(self.latency_s, 6),
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
            "counts": dict(self.counts),
            "solution": self.solution,
            "steps": [s.to_json() for s in self.steps],
        }

    @classmethod
    def from_json(cls, d: Any, where: str) -> ProblemRecord:
        if not isinstance(d, dict):
            _fail(where, "(line)", "expected a JSON object (one problem)")
        for fld in ("id", "question", "steps"):
            if fld not in d:
                _fail(where, fld, "missing (is this a results.jsonl of `arbitrage run`?)")
        if not isinstance(d["question"], str):
            _fail(where, "question", "not a string")
        if not isinstance(d["steps"], list):
            _fail(where, "steps", "not a list")
        steps = [StepRecord.from_json(s, where, f"steps[{k}]") for k, s in enumerate(d["steps"])]
        return cls(
            id=str(d["id"]),
            question=d["question"],
            gold=d.get("gold"),
            prediction=d.get("prediction"),
            correct=bool(d.get("correct", False)),
            grade_reason=str(d.get("grade_reason", "")),
            policy=str(d.get("policy", "")),
            threshold=d.get("threshold"),
            finish=str(d.get("finish", "")),
            latency_s=float(d.get("latency_s", 0.0)),
            seconds=dict(d.get("seconds") or {}),
            counts=dict(d.get("counts") or {}),
            solution=str(d.get("solution", "")),
            steps=steps,
        )
