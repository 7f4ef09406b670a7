"""Reading OpenAI-style request bodies: every field checked, and a bad one named in a 400 (404 for an unknown
model), in the error layout OpenAI clients expect ({"error": {"message", "type", "param", "code"}})."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..engine import Limits
from ..types import Sampling


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass
class ParsedRequest:
    """What one completion request asks the engine for."""

    chat: bool
    prompt: str | None = None                 # completions: the raw prompt
    messages: list[dict] | None = None        # chat: the messages, rendered by the chat template
    policy: str | None = None                 # None: the server's default
    threshold: float | None = None
    policy_options: dict = field(default_factory=dict)
    sampling: Sampling | None = None
    limits: Limits = field(default_factory=Limits)
    stream: bool = False
    include_usage: bool = False


def _number(body: dict, name: str, lo: float | None = None, hi: float | None = None, integer: bool = False,
            lo_open: bool = False):
    v = body.get(name)
    if v is None:
        return None
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or not math.isfinite(v):
        raise RequestError(f"'{name}' must be {'an integer' if integer else 'a number'}, not {v!r}", name)
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise RequestError(f"'{name}' must be {'>' if lo_open else '>='} {lo:g}, not {v!r}", name)
    if hi is not None and v > hi:
        raise RequestError(f"'{name}' must be <= {hi:g}, not {v!r}", name)
    return v


UNSUPPORTED = {"n": "one choice per request (n = 1)", "best_of": "best_of = 1", "echo": "echo = false",
               "suffix": "no suffix", "logit_bias": "no logit_bias", "tools": "no tools", "functions": "no functions"}


def parse_request(body: Any, chat: bool, served_name: str, policies: dict, thresholded: dict) -> ParsedRequest:
    """Check a /v1/completions (chat=False) or /v1/chat/completions body. `policies`: name -> class."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise RequestError("'model' is required", "model")
    if model != served_name:
        raise RequestError(f"the model {model!r} does not exist; this server serves {served_name!r}", "model",
                           status=404, kind="not_found_error")
    for name, what in UNSUPPORTED.items():
        v = body.get(name)
        if v is None or (name in ("n", "best_of") and v == 1) or (name == "echo" and v is False):
            continue
        raise RequestError(f"'{name}' is not supported: this server takes {what}", name)
    req = ParsedRequest(chat=chat)
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise RequestError("'messages' must be a non-empty list of {role, content} objects", "messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise RequestError(f"messages[{i}] must be an object with string 'role' and 'content'",
                                   f"messages[{i}]")
        req.messages = msgs
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError("'prompt' must be a non-empty string (one prompt per request)", "prompt")
        req.prompt = prompt
    policy = body.get("policy")
    if policy is not None:
        if policy not in policies:
            raise RequestError(f"unknown policy {policy!r}; choose one of {', '.join(policies)}", "policy")
        req.policy = policy
    threshold = _number(body, "threshold")
    if threshold is not None:
        name = req.policy
        if name is not None and name not in thresholded:
            raise RequestError(f"policy {name!r} takes no threshold", "threshold")
        req.threshold = float(threshold)
    decide_after = _number(body, "decide_after", lo=1, integer=True)
    if decide_after is not None:
        req.policy_options["decide_after"] = int(decide_after)
    temperature = _number(body, "temperature", lo=0, hi=2)
    top_p = _number(body, "top_p", lo=0, hi=1, lo_open=True)
    seed = _number(body, "seed", integer=True)
    if temperature is not None or top_p is not None or seed is not None:
        req.sampling = Sampling(None if temperature is None else float(temperature),
                                None if top_p is None else float(top_p), seed)
    max_tokens = _number(body, "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens",
                         lo=1, integer=True)
    max_steps = _number(body, "max_steps", lo=1, integer=True)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)
                             or len(stop) > 4):
        raise RequestError("'stop' must be a string or a list of up to 4 non-empty strings", "stop")
    req.limits = Limits(max_steps=max_steps, max_total_tokens=max_tokens, stop=tuple(stop or ()))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false", "stream")
    req.stream = stream
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool):
            raise RequestError("'stream_options' must be an object like {\"include_usage\": true}", "stream_options")
        if not stream:
            raise RequestError("'stream_options' is only allowed with stream: true", "stream_options")
        req.include_usage = bool(opts.get("include_usage", False))
    return req
