"""The small protocols between the engine and the models.

A *generator* writes steps (draft and target), a *step scorer* is a PRM, a *router* predicts escalation and a
*step judge* scores a draft step 0-9 (the SpecReason baseline's target-as-judge). Each takes a whole batch of
requests at once, so in-process backends can run one batched forward pass and server backends can send the
requests concurrently. `release(key)` drops what a backend kept for a problem.

Optional members the engine reads through the helpers at the end of this module (`lane_of`, `lane_capacity`,
`can_cancel`, `health_of`) rather than by checking types:
- `cancel(key)`: stop work in flight for a problem (a server request, a row of a batched decode);
- `lane`: models with the same lane never run at the same time (in-process models on one device share one,
  so they do not oversubscribe its threads); by default every model is its own lane;
- `max_concurrent_calls`: how many calls a model's lane takes at once (a server client sends each call's
  requests concurrently and the server batches them: a new call need not wait for the last); default 1;
- a router's `draft_features`: what it reads from the draft's step (e.g. "last_hidden"), so the draft can be
  asked to compute it;
- `health()`: "up", "down" or "degraded" (some replicas down) for a model on servers; a model without it is
  in-process and always answers.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol, runtime_checkable

from .types import Generation, GenerationRequest, JudgeRequest, RouteRequest, ScoreRequest


@runtime_checkable
class StepGenerator(Protocol):
    name: str
    separator: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]: ...

    def release(self, key: str) -> None: ...


@runtime_checkable
class StepScorer(Protocol):
    """A process reward model: one score in [0, 1] per candidate."""

    name: str

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]: ...

    def release(self, key: str) -> None: ...


@runtime_checkable
class Router(Protocol):
    """y_hat = P(the target's step would score higher than the draft's), in [0, 1]."""

    name: str

    def predict(self, requests: Sequence[RouteRequest]) -> list[float]: ...

    def release(self, key: str) -> None: ...


@runtime_checkable
class StepJudge(Protocol):
    """A 0-9 score per draft step, read from a model's next-token distribution after a judging question."""

    name: str

    def judge(self, requests: Sequence[JudgeRequest]) -> list[float]: ...

    def release(self, key: str) -> None: ...


# A model of any role: each protocol's common ground is `release(key)`.
Model = StepGenerator | StepScorer | Router | StepJudge


def lane_of(model) -> Hashable:
    """The lane a model runs on: its own `lane` attribute, else the model object itself."""
    lane = getattr(model, "lane", None)
    return lane if lane is not None else ("model", id(model))


def lane_capacity(model) -> int:
    """Calls a model takes at once: its `max_concurrent_calls` (a server client: the requests it may have in
    flight), else 1 (an in-process model computes one batch at a time)."""
    return int(getattr(model, "max_concurrent_calls", 1) or 1)


def can_cancel(model) -> bool:
    return callable(getattr(model, "cancel", None))


def health_of(model) -> str:
    """ "in-process", or what the model's own `health()` says about its servers."""
    check = getattr(model, "health", None)
    return check() if callable(check) else "in-process"
