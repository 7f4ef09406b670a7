"""Reading OpenAI-style request bodies: every field checked, and a bad one named in a 400 (404 for an unknown
model), in the error layout OpenAI clients expect ({"error": {"message", "type", "param", "code"}})."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..engine import Limits
from ..errors import ConfigError
from ..types import Sampling

# Fields OpenAI's API has that this server does not implement: refused unless given their neutral value, so that
# nothing a client asks for is silently ignored. name -> (values taken, what the server takes).
UNSUPPORTED: dict[str, tuple[tuple, str]] = {
    "n": ((1,), "one choice per request (n = 1)"),
    "best_of": ((1,), "best_of = 1"),
    "echo": ((False,), "echo = false"),
    "suffix": (("",), "no suffix"),
    "logit_bias": (({},), "no logit_bias"),
    "logprobs": ((False,), "no log-probs (logprobs = null or false)"),
    "top_logprobs": ((0,), "no log-probs (top_logprobs = null or 0)"),
    "presence_penalty": ((0, 0.0), "no presence_penalty"),
    "frequency_penalty": ((0, 0.0), "no frequency_penalty"),
    "tools": (([],), "no tools"),
    "functions": (([],), "no functions"),
    "tool_choice": (("none",), "no tools (tool_choice = none)"),
    "response_format": (({"type": "text"},), "free text (response_format = text)"),
}


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass
class ParsedRequest:
    """What one completion request asks the engine for."""

    chat: bool
    prompt: str | None = None  # completions: the raw prompt
    messages: list[dict] | None = None  # chat: the messages, rendered by the chat template
    policy: str | None = None  # None: the server's default
    threshold: float | None = None
    policy_options: dict = field(default_factory=dict)
    sampling: Sampling | None = None
    limits: Limits = field(default_factory=Limits)
    stream: bool = False
    include_usage: bool = False
    max_tokens_field: str = "max_tokens"


SEED_RANGE = (-(2**63), 2**64 - 1)  # what vLLM and OpenAI take: a 64-bit integer


def _number(
    body: dict,
    name: str,
    lo: float | None = None,
    hi: float | None = None,
    integer: bool = False,
    lo_open: bool = False,
):
    v = body.get(name)
    if v is None:
        return None
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type:
        raise RequestError(f"'{name}' must be {'an integer' if integer else 'a number'}, not {_show(v)}", name)
    if isinstance(v, float) and not math.isfinite(v):
        raise RequestError(f"'{name}' must be a finite number, not {v!r}", name)
    if isinstance(v, int) and not integer and abs(v) > 2**53:  # a float field given an integer no float holds
        raise RequestError(f"'{name}' is out of range: {_show(v)}", name)
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise RequestError(f"'{name}' must be {'>' if lo_open else '>='} {lo:g}, not {_show(v)}", name)
    if hi is not None and v > hi:
        raise RequestError(f"'{name}' must be <= {hi:g}, not {_show(v)}", name)
    return v


def _show(v: Any, limit: int = 60) -> str:
    """A short rendering of a bad value for an error message (a huge one is cut, never sent back whole)."""
    try:
        text = repr(v)
    except (ValueError, RecursionError):  # e.g. an int beyond Python's digit limit for str()
        return f"a {type(v).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."


def check_text(value: str, field: str) -> str:
    """Text a tokenizer can take: valid Unicode (JSON can carry unpaired surrogates, which no UTF-8 tokenizer
    accepts)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            f"'{field}' is not valid Unicode: an unpaired surrogate {value[exc.start]!r} at character {exc.start}",
            field,
        ) from None
    return value


CHAT_ROLES = ("system", "developer", "user", "assistant")


def _message_content(m: dict, i: int) -> str:
    """A message's text: a string, or OpenAI's list of content parts ({"type": "text", "text": ...}), joined with
    newlines as vLLM joins them."""
    content = m.get("content")
    field = f"messages[{i}].content"
    if isinstance(content, str):
        return check_text(content, field)
    if isinstance(content, list) and content:
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestError(
                    f'{field}[{j}] must be a text part {{"type": "text", "text": ...}}; '
                    f"this server reads text only (got {_show(kind)})",
                    f"{field}[{j}]",
                )
            texts.append(check_text(part["text"], f"{field}[{j}].text"))
        return "\n".join(texts)
    raise RequestError(f"{field} must be a string or a non-empty list of text parts", field)


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(
                f"messages[{i}] must be an object with a string 'role' and a 'content'", f"messages[{i}]"
            )
        role = m["role"]
        if role not in CHAT_ROLES:
            why = " (this server takes no tools)" if role in ("tool", "function") else ""
            raise RequestError(
                f"messages[{i}].role {_show(role)} is not one of {', '.join(CHAT_ROLES)}{why}", f"messages[{i}].role"
            )
        if m.get("tool_calls") or m.get("function_call"):
            raise RequestError(f"messages[{i}] has tool calls; this server takes no tools", f"messages[{i}]")
        out.append({"role": "system" if role == "developer" else role, "content": _message_content(m, i)})
    if not any(m["role"] == "user" for m in out):
        raise RequestError("'messages' must hold at least one message with role 'user' (the question)", "messages")
    return out


def parse_request(
    body: Any, chat: bool, served_name: str, policies: dict, thresholded: dict, policy_options: dict | None = None
) -> ParsedRequest:
    """Check a /v1/completions (chat=False) or /v1/chat/completions body. `policies`: name -> class;
    `policy_options`: the options policies declare (registry().policy_options()), read as request fields."""
    policy_options = policy_options or {}
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise RequestError("'model' is required", "model")
    if not isinstance(model, str):
        raise RequestError(f"'model' must be a string, not {_show(model)}", "model")
    if model != served_name:
        raise RequestError(
            f"the model {_show(model)} does not exist; this server serves {served_name!r}",
            "model",
            status=404,
            kind="not_found_error",
        )
    for name, (allowed, what) in UNSUPPORTED.items():
        v = body.get(name)
        if v is None or any(v is a or (type(v) is type(a) and v == a) for a in allowed):
            continue
        raise RequestError(f"'{name}' is not supported: this server takes {what}", name)
    req = ParsedRequest(chat=chat)
    if chat:
        req.messages = _messages(body)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError("'prompt' must be a non-empty string (one prompt per request)", "prompt")
        req.prompt = check_text(prompt, "prompt")
    policy = body.get("policy")
    if policy is not None:
        if not isinstance(policy, str):
            raise RequestError(f"'policy' must be a string, not {_show(policy)}", "policy")
        if policy not in policies:
            raise RequestError(f"unknown policy {policy!r}; choose one of {', '.join(policies)}", "policy")
        req.policy = policy
    threshold = _number(body, "threshold")
    if threshold is not None:
        chosen = req.policy
        if chosen is not None and chosen not in thresholded:
            raise RequestError(f"policy {chosen!r} takes no threshold", "threshold")
        req.threshold = float(threshold)
    for name, (opt, _) in policy_options.items():  # every policy's own options, as they declare them
        if opt.request and body.get(name) is not None:
            try:
                req.policy_options[name] = opt.check(body[name], field=True)
            except ConfigError as exc:
                raise RequestError(exc.for_request(), name) from None
    temperature = _number(body, "temperature", lo=0, hi=2)
    top_p = _number(body, "top_p", lo=0, hi=1, lo_open=True)
    seed = _number(body, "seed", lo=SEED_RANGE[0], hi=SEED_RANGE[1], integer=True)
    if temperature is not None or top_p is not None or seed is not None:
        req.sampling = Sampling(
            None if temperature is None else float(temperature), None if top_p is None else float(top_p), seed
        )
    req.max_tokens_field = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    max_tokens = _number(body, req.max_tokens_field, lo=1, integer=True)
    max_steps = _number(body, "max_steps", lo=1, integer=True)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4
    ):
        raise RequestError("'stop' must be a string or a list of up to 4 non-empty strings", "stop")
    for s in stop or ():
        check_text(s, "stop")
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
