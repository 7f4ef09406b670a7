"""Plain data shared by every module: problems, steps, requests and results of model calls.

Everything here is a dataclass with no behaviour beyond small helpers, so backends (in-process, HTTP),
scorers, policies and the engine can exchange it without importing each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, overload

Author = Literal["draft", "target"]
# Why a model stopped writing a step: at the step separator, at end-of-sequence, or at a token limit.
StopReason = Literal["separator", "eos", "length"]
AUTHORS: tuple[Author, ...] = ("draft", "target")
STOP_REASONS: tuple[StopReason, ...] = ("separator", "eos", "length")
# The step separator of docs/method.md; every config and backend defaults to this one constant.
DEFAULT_SEPARATOR = "\n\n"


@dataclass
class Problem:
    """One question of a dataset. `prompt` is the exact text the generators continue."""

    id: str
    question: str
    prompt: str
    gold: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Step:
    """One reasoning step as written by one model.

    `text` never contains the separator; the step is followed by the separator in the context iff
    `stop == "separator"`. `token_ids` are the ids the author produced for `text` plus separator (None when
    unknown, e.g. from a server that returns text only); other models re-tokenize the text.
    """

    author: Author
    text: str
    stop: StopReason
    n_tokens: int
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    # Free-form per-step features a backend can expose (e.g. the draft's last hidden state for probe routers).
    extras: dict = field(default_factory=dict)

    def context_text(self, separator: str) -> str:
        """The text this step contributes to the context of later steps."""
        return self.text + separator if self.stop == "separator" else self.text


@dataclass(frozen=True)
class Sampling:
    """Per-request sampling settings (a server request's own); None fields fall back to the generator's."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None

    @overload
    def over(self, temperature: float, top_p: float, seed: int) -> tuple[float, float, int]: ...

    @overload
    def over(self, temperature: float, top_p: float, seed: int | None) -> tuple[float, float, int | None]: ...

    def over(self, temperature: float, top_p: float, seed: int | None) -> tuple[float, float, int | None]:
        """(temperature, top_p, seed): these settings where set, the generator's defaults where not."""
        return (
            temperature if self.temperature is None else self.temperature,
            top_p if self.top_p is None else self.top_p,
            seed if self.seed is None else self.seed,
        )


@dataclass
class GenerationRequest:
    """Write the next step after `prompt` + `steps`. `key` names the problem: a backend may keep state
    (a KV cache) under it between calls until `release(key)`.

    `prefix`: a partial step this generator wrote earlier (its first tokens): continue that same step after
    it, and return only the continuation. `max_new_tokens` bounds the tokens written by this call."""

    key: str
    prompt: str
    steps: Sequence[Step]
    max_new_tokens: int
    step_index: int = 0
    sampling: Sampling | None = None
    prefix: Step | None = None
    sample: int = 0  # > 0: another sample from the same context (its own seed)
    seed_key: str | None = None  # what the sampling seed is derived from (None: `key`); see `seed_source`
    # Escalations that reuse the draft's work (backends/speculative.py): the draft's proposal for this step, to
    # be verified before the target writes the rest; `gamma` > 0 lets a draft attached to the target propose that
    # many tokens at a time inside the step. Both are lossless; a backend that cannot do them writes as usual.
    speculation: Step | None = None
    gamma: int = 0

    @property
    def seed_source(self) -> str:
        """The problem's name in its sampling seeds: a server request with its own `seed` uses a fixed name, so
        the same request gets the same text every time (streamed or not); a run uses the problem id."""
        return self.key if self.seed_key is None else self.seed_key


@dataclass
class Generation:
    text: str
    stop: StopReason
    token_ids: list[int]
    logprobs: list[float] | None = None
    n_prefill: int = 0  # tokens whose keys/values were computed before decoding (0 when unknown)
    n_reused: int = 0  # context tokens whose cached keys/values were reused (0 when unknown)
    extras: dict = field(default_factory=dict)


@dataclass
class ScoreRequest:
    """Score each candidate step as the next step after `steps` for `question` (PRM)."""

    key: str
    question: str
    steps: Sequence[Step]
    candidates: Sequence[Step]


@dataclass
class RouteRequest:
    """Predict whether the target would write a better step than `draft` after `steps` (router)."""

    key: str
    question: str
    steps: Sequence[Step]
    draft: Step


@dataclass
class JudgeRequest:
    """Score `draft` as the step after `prompt` + `steps` (a judge reads `question` after it). `key` names the
    problem, as in GenerationRequest, so a backend may reuse its cache of the context."""

    key: str
    prompt: str
    steps: Sequence[Step]
    draft: Step
    question: str


def context_text(prompt: str, steps: Sequence[Step], separator: str) -> str:
    return prompt + "".join(s.context_text(separator) for s in steps)


def context_ids(
    encode, owner: str, separator: str, prompt: str, steps: Sequence[Step], prefix: Step | None = None
) -> list[int]:
    """The token ids a model named `owner` reads for this context: the prompt with special tokens, then each
    step: the owner's own ids when it wrote the step, else the step's text re-tokenized; then a partial step
    (`prefix`) it is continuing. `encode(text, special)`. The in-process and the served backends both build
    contexts here, so a served model sees exactly what the same model in-process would."""
    ids = list(encode(prompt, True))
    for step in steps:
        if step.token_ids is not None and step.extras.get("generator") == owner:  # the owner's own ids
            ids += step.token_ids
        else:
            ids += encode(step.context_text(separator), False)
    if prefix is not None:
        ids += prefix.token_ids if prefix.token_ids else encode(prefix.text, False)
    return ids


def request_seed(seed: int, key: str, step_index: int, sample: int = 0) -> int:
    """The sampling seed of one request: the same problem, step and sample always get the same seed, in-process
    and on a server alike (31 bits, which every server accepts)."""
    digest = hashlib.sha256(f"{seed}:{key}:{step_index}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF
