"""What `arbitrage serve` serves: one engine running in the background, shared by every request, plus what a
request needs around it (its policy, the chat template, token counts, health of the backends).

Each request becomes one problem submitted to the engine with its own policy, threshold, limits, stop strings
and sampling. Steps reach the request's asyncio queue as the engine accepts them (streaming sends one chunk
per step); a client that goes away cancels its problem, which frees its place and its models' state at once.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass, replace
from typing import Any

from ..engine import Engine, EngineConfig, Limits, Models, ProblemResult
from ..errors import ConfigError
from ..policies import Policy, make_policy
from ..protocols import health_of
from ..records import SPECULATION_COUNTS
from ..types import Problem
from .metrics import ServerMetrics
from .requests import ParsedRequest, RequestError


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    draft_tokens: int
    target_tokens: int
    discarded_draft_tokens: int
    steps: int
    escalated_steps: int
    speculation: dict | None = None  # how target-written steps reused the draft's work (records.SPECULATION_COUNTS)

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "draft_tokens": self.draft_tokens,
            "target_tokens": self.target_tokens,
            "discarded_draft_tokens": self.discarded_draft_tokens,
            "steps": self.steps,
            "escalated_steps": self.escalated_steps,
        }
        if self.speculation is not None:
            out["speculation"] = self.speculation
        return out


FINISH = {"eos": "stop", "stop": "stop", "max_steps": "length", "budget": "length", "context": "length"}
DEFAULT_MAX_PROMPT_TOKENS = 32768  # when no in-process model says how many positions it has
BYTES_PER_TOKEN_BOUND = 16  # a prompt longer than this many bytes per allowed token is refused before tokenizing


def context_window(models: Models) -> int | None:
    """The fewest positions among the in-process draft and target (None when neither says: served models)."""
    sizes = []
    for model in (models.draft, models.target):
        config = getattr(getattr(model, "model", None), "config", None)
        n = getattr(config, "max_position_embeddings", None)
        if isinstance(n, int) and n > 0:
            sizes.append(n)
    return min(sizes) if sizes else None


class Service:
    """The engine and everything a request needs from it. `tokenizer`: renders chat prompts and counts prompt
    tokens (the draft's when it is in-process)."""

    def __init__(
        self,
        models: Models,
        policy: Policy,
        config: EngineConfig,
        served_name: str = "arbitrage",
        tokenizer=None,
        policy_options: dict | None = None,
        max_prompt_tokens: int | None = None,
    ):
        self.models, self.default_policy, self.config = models, policy, config
        self.served_name, self.tokenizer = served_name, tokenizer
        self.policy_options = dict(policy_options or {})
        self.metrics = ServerMetrics()
        self.engine = Engine(policy, models, config, on_call=self.metrics.on_call, isolate_failures=True)
        self.window = context_window(models)
        if max_prompt_tokens is None:
            max_prompt_tokens = self.window - 1 if self.window else DEFAULT_MAX_PROMPT_TOKENS
        if max_prompt_tokens < 1 or (self.window and max_prompt_tokens >= self.window):
            raise ConfigError(
                f"--max-prompt-tokens {max_prompt_tokens}: must be at least 1 and below the models' "
                f"{self.window} positions",
                "max_prompt_tokens",
            )
        self.max_prompt_tokens = max_prompt_tokens
        self.max_prompt_bytes = max_prompt_tokens * BYTES_PER_TOKEN_BOUND
        # The whole body: the prompt (or messages) plus JSON quoting and the other fields.
        self.max_body_bytes = max(1 << 20, 4 * self.max_prompt_bytes + (64 << 10))
        self.ids = itertools.count()
        self.started = time.time()

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()

    # --- requests ----------------------------------------------------------------------------------------
    def policy_for(self, req: ParsedRequest) -> Policy:
        if req.policy is None and req.threshold is None and not req.policy_options:
            return self.default_policy
        name = req.policy or self.default_policy.name
        options = dict(self.policy_options if req.policy is None else {}, **req.policy_options)
        threshold = req.threshold
        if threshold is None and req.policy is None:
            threshold = self.default_policy.threshold
        try:
            policy = make_policy(name, threshold, **options)
            self.models.check(policy)
        except ConfigError as exc:
            raise RequestError(exc.for_request(), exc.option or "policy") from None
        return policy

    def prompt_of(self, req: ParsedRequest) -> str:
        if not req.chat:
            assert req.prompt is not None  # parse_request requires a prompt of a completions request
            return req.prompt
        tok = self.tokenizer
        if tok is None or not getattr(tok, "chat_template", None):
            raise RequestError(
                "chat completions need a chat template: this server's draft has no local tokenizer "
                "with one (start it with --tokenizer PATH, or use /v1/completions)",
                "messages",
            )
        try:
            return tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:
            raise RequestError(f"the chat template could not render these messages: {exc}", "messages") from None

    def prompt_tokens(self, prompt: str) -> int:
        if self.tokenizer is None:
            return 0
        return len(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def limits_for(self, req: ParsedRequest, prompt: str) -> Limits:
        """The request's limits with its prompt checked against --max-prompt-tokens and its output against the
        models' positions (bytes are bounded before anything is tokenized)."""
        field = "messages" if req.chat else "prompt"
        size = len(prompt.encode("utf-8"))
        if size > self.max_prompt_bytes:
            raise RequestError(
                f"'{field}' is too long: {size} bytes; this server takes prompts of up to "
                f"{self.max_prompt_tokens} tokens",
                field,
            )
        limits = req.limits
        if self.tokenizer is None:
            return limits
        n = self.prompt_tokens(prompt)
        if n > self.max_prompt_tokens:
            raise RequestError(
                f"'{field}' is {n} tokens long; this server takes prompts of up to {self.max_prompt_tokens} tokens",
                field,
            )
        if self.window:
            room = self.window - n
            asked = limits.max_total_tokens
            if asked is not None and asked > room:
                name = (
                    "max_completion_tokens"
                    if req.chat and req.max_tokens_field == "max_completion_tokens"
                    else "max_tokens"
                )
                raise RequestError(
                    f"'{name}' {asked} and the prompt's {n} tokens exceed the models' context window "
                    f"of {self.window} tokens: ask for at most {room}",
                    name,
                )
            limits = replace(limits, max_total_tokens=min(asked or self.config.max_total_tokens, room))
        return limits

    def submit(self, req: ParsedRequest, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        """Start one request's problem; steps and the end arrive on `queue` as ("step", record, step),
        ("done", result) or ("error", exception)."""
        if not self.engine.alive:
            raise RequestError(
                f"the engine stopped ({self.engine.failure!r}); restart the server", None, 503, "server_error"
            )
        policy = self.policy_for(req)
        prompt = self.prompt_of(req)
        limits = self.limits_for(req, prompt)
        pid = f"req-{os.getpid()}-{next(self.ids)}"
        meta = {"seed_key": "request"} if req.sampling is not None and req.sampling.seed is not None else {}
        problem = Problem(id=pid, question=prompt, prompt=prompt, meta=meta)

        def on_step(ticket, record, step):
            self.metrics.on_step(record)
            loop.call_soon_threadsafe(queue.put_nowait, ("step", record, step))

        def on_done(result: ProblemResult):
            self.metrics.on_done(result)
            loop.call_soon_threadsafe(queue.put_nowait, ("done", result))

        def on_error(exc: BaseException):
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        ticket = self.engine.submit(
            problem,
            on_done=on_done,
            on_step=on_step,
            policy=policy,
            limits=limits,
            sampling=req.sampling,
            on_error=on_error,
        )
        self.metrics.in_flight.set(self.engine.in_flight)
        return ticket, prompt

    def usage(self, prompt: str, result: ProblemResult) -> Usage:
        c = result.counts
        return Usage(
            prompt_tokens=self.prompt_tokens(prompt),
            completion_tokens=self.returned_tokens(result),
            draft_tokens=c["draft_tokens_accepted"] + c["draft_tokens_discarded"],
            target_tokens=c["target_tokens"],
            discarded_draft_tokens=c["draft_tokens_discarded"],
            steps=len(result.steps),
            escalated_steps=c["escalated_steps"],
            speculation={k.removeprefix("spec_"): c[k] for k in SPECULATION_COUNTS}
            if c.get("spec_target_forwards")
            else None,
        )

    def returned_tokens(self, result: ProblemResult) -> int:
        """Tokens of the text returned: every step's own count, except a step a stop string cut, whose kept text
        is counted (re-tokenized; by its share of the characters when the server has no tokenizer)."""
        steps = result.steps
        if result.finish != "stop" or not steps:
            return sum(s.n_tokens for s in steps)
        *whole, cut = steps
        if self.tokenizer is not None:
            kept = len(self.tokenizer(cut.text, add_special_tokens=False)["input_ids"]) if cut.text else 0
        else:
            kept = round(cut.n_tokens * len(cut.text) / max(1, cut.extras.get("chars_before_cut", len(cut.text))))
        return sum(s.n_tokens for s in whole) + min(kept, cut.n_tokens)

    # --- health ------------------------------------------------------------------------------------------
    def health(self) -> dict:
        """Which backends answer (in-process models always do; a server must answer within a second), and whether
        the engine runs ("engine": "down" once it stopped on an error)."""
        status = {"engine": "up" if self.engine.alive else "down"}
        for role, model in self.models.all():
            status[role] = health_of(model)
        return status
