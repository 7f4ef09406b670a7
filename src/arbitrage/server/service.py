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
from dataclasses import dataclass

from ..engine import Engine, EngineConfig, Models, ProblemResult
from ..errors import ConfigError
from ..policies import Policy, make_policy
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

    def to_json(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens, "draft_tokens": self.draft_tokens,
                "target_tokens": self.target_tokens, "discarded_draft_tokens": self.discarded_draft_tokens,
                "steps": self.steps, "escalated_steps": self.escalated_steps}


FINISH = {"eos": "stop", "stop": "stop", "max_steps": "length", "budget": "length"}


class Service:
    """The engine and everything a request needs from it. `tokenizer`: renders chat prompts and counts prompt
    tokens (the draft's when it is in-process)."""

    def __init__(self, models: Models, policy: Policy, config: EngineConfig, served_name: str = "arbitrage",
                 tokenizer=None, policy_options: dict | None = None):
        self.models, self.default_policy, self.config = models, policy, config
        self.served_name, self.tokenizer = served_name, tokenizer
        self.policy_options = dict(policy_options or {})
        self.metrics = ServerMetrics()
        self.engine = Engine(policy, models, config, on_call=self.metrics.on_call)
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
            raise RequestError(str(exc), exc.option or "policy") from None
        return policy

    def prompt_of(self, req: ParsedRequest) -> str:
        if not req.chat:
            return req.prompt  # type: ignore[return-value]
        tok = self.tokenizer
        if tok is None or not getattr(tok, "chat_template", None):
            raise RequestError("chat completions need a chat template: this server's draft has no local tokenizer "
                               "with one (start it with --tokenizer PATH, or use /v1/completions)", "messages")
        try:
            return tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001  a template that rejects these messages (e.g. roles)
            raise RequestError(f"the chat template could not render these messages: {exc}", "messages") from None

    def prompt_tokens(self, prompt: str) -> int:
        if self.tokenizer is None:
            return 0
        return len(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def submit(self, req: ParsedRequest, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        """Start one request's problem; steps and the end arrive on `queue` as ("step", record, step),
        ("done", result) or ("error", exception)."""
        policy = self.policy_for(req)
        prompt = self.prompt_of(req)
        pid = f"req-{os.getpid()}-{next(self.ids)}"
        problem = Problem(id=pid, question=prompt, prompt=prompt)

        def on_step(ticket, record, step):
            self.metrics.on_step(record)
            loop.call_soon_threadsafe(queue.put_nowait, ("step", record, step))

        def on_done(result: ProblemResult):
            self.metrics.on_done(result)
            loop.call_soon_threadsafe(queue.put_nowait, ("done", result))

        ticket = self.engine.submit(problem, on_done=on_done, on_step=on_step, policy=policy, limits=req.limits,
                                    sampling=req.sampling)
        self.metrics.in_flight.set(self.engine.in_flight)
        return ticket, prompt

    def usage(self, prompt: str, result: ProblemResult) -> Usage:
        c = result.counts
        return Usage(prompt_tokens=self.prompt_tokens(prompt),
                     completion_tokens=sum(s.n_tokens for s in result.steps),
                     draft_tokens=c["draft_tokens_accepted"] + c["draft_tokens_discarded"],
                     target_tokens=c["target_tokens"], discarded_draft_tokens=c["draft_tokens_discarded"],
                     steps=len(result.steps), escalated_steps=c["escalated_steps"])

    # --- health ------------------------------------------------------------------------------------------
    def health(self) -> dict:
        """Which backends answer: in-process models always do; a server must answer within a second."""
        status = {}
        for role, model in self.models.all():
            http = getattr(model, "http", None) or getattr(getattr(model, "client", None), "http", None)
            status[role] = "in-process" if http is None else ("up" if _answers(http.root) else "down")
        return status


def _answers(root: str, timeout: float = 1.0) -> bool:
    import httpx

    for path in ("/health", "/v1/models"):
        try:
            if httpx.get(root + path, timeout=timeout).status_code < 500:
                return True
        except httpx.HTTPError:
            continue
    return False
