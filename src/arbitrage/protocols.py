"""The small protocols between the engine and the models.

A *generator* writes steps (draft and target), a *step scorer* is a PRM, a *router* predicts escalation.
Each takes a whole batch of requests at once, so in-process backends can run one batched forward pass and
server backends can send the requests concurrently. `release(key)` drops what a backend kept for a problem.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from .types import Generation, GenerationRequest, RouteRequest, ScoreRequest


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
