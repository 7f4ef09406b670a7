"""Draft and target models on a server: vLLM or SGLang over /v1/completions, llama.cpp over /completion.

Each request continues a raw prompt (no chat template) and stops at the separator. Servers report why they
stopped in different fields; `normalize_finish` turns each into the project's "separator" / "eos" / "length".
Servers cache prefixes themselves (start vLLM with --enable-prefix-caching; SGLang does it by default), so
`release` has nothing to drop.

With a local `tokenizer`, prompts go as token ids built exactly as the in-process backend builds them (the
prompt tokenized with special tokens, then each step: this generator's own ids if it wrote the step, else
the step's text re-tokenized), so a served model and the same model in-process see the same tokens.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from ..errors import BackendError, ModelLoadError
from ..types import (
    DEFAULT_SEPARATOR,
    Generation,
    GenerationRequest,
    JudgeRequest,
    Sampling,
    StopReason,
    context_ids,
    context_text,
    request_seed,
)
from .http_common import HttpClient, event_loop, load_tokenizer
from .server_answers import _entropies, _logprobs, first_token_top_logprobs, normalize_finish, per_token_top_logprobs  # noqa: F401

log = logging.getLogger(__name__)
APIS = ("completions", "llamacpp")


# --- the generator ----------------------------------------------------------------------------------------


class OpenAICompletionsGenerator:
    """A StepGenerator on an OpenAI-compatible server (vLLM, SGLang) or llama.cpp's server.

    `model`: the served model name (None: the first one the server lists). `tokenizer`: a local path, hub id
    or tokenizer object to send prompts as token ids; "auto" (default): the served directory's tokenizer when
    that directory is on this machine, else none; None: send text. `api`: "completions" (POST
    /v1/completions) or "llamacpp" (POST /completion, whose stop_type tells eos from the separator).
    `check`: probe the server now, failing with the URL if it does not answer.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        separator: str = DEFAULT_SEPARATOR,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        concurrency: int = 16,
        timeout: float = 600.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        api_key: str | None = None,
        name: str | None = None,
        api: str = "completions",
        tokenizer: Any = "auto",
        logprobs: bool = True,
        top_logprobs: int = 5,
        extra_body: dict | None = None,
        check: bool = True,
        transport=None,
        verify: str | None = "auto",
    ):
        if api not in APIS:
            raise ValueError(f"api must be one of {APIS}, not {api!r}")
        self.separator, self.temperature, self.top_p, self.seed = separator, temperature, top_p, seed
        self.api, self.want_logprobs, self.extra_body = api, logprobs, dict(extra_body or {})
        # top-k alternatives per token: k >= 2 gives per-token entropy estimates (extras["entropies"])
        self.top_logprobs = max(1, int(top_logprobs))
        self.max_concurrent_calls = concurrency  # the server batches concurrent calls itself (engine lanes)
        self.http = HttpClient(
            base_url,
            kind=f"{name or 'generation'} server",
            concurrency=concurrency,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            api_key=api_key,
            transport=transport,
        )
        self.model, root, owner = model, None, None
        if check:
            listing = self.http.probe()
            self.model, root = self._check_model(listing)
            owner = next((m.get("owned_by") for m in (listing or {}).get("data", []) if isinstance(m, dict)), None)
        # How this server verifies a draft's proposal (served_speculation.py): "vllm" (prompt_logprobs), "sglang"
        # (return_logprob on /generate) or None; "auto": from the server's /v1/models owner.
        self.verify_route = (owner if owner in ("vllm", "sglang") else None) if verify == "auto" else verify
        if api != "completions":
            self.verify_route = None
        self.name = name or self.model or self.http.root
        if isinstance(tokenizer, str) and tokenizer == "auto":
            tokenizer = _served_tokenizer(root)
        elif isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self._encode = lru_cache(maxsize=65536)(self._encode_uncached)
        self._in_flight: dict[str, set[asyncio.Task]] = {}  # problem key -> its requests now on the server

    @property
    def base_url(self) -> str:
        return self.http.root

    def _check_model(self, listing: Any) -> tuple[str | None, str | None]:
        """(model name, its directory on the server) from a /v1/models listing."""
        served = {m.get("id"): m.get("root") for m in (listing or {}).get("data", []) if isinstance(m, dict)}
        if self.model is None:
            return next(iter(served.items()), (None, None))
        if served and self.model not in served:
            raise BackendError(
                f"{self.http.kind} at {self.http.root} does not serve {self.model!r}; "
                f"it serves {', '.join(map(repr, served))}"
            )
        return self.model, served.get(self.model)

    # --- prompts --------------------------------------------------------------------------------------
    def _encode_uncached(self, text: str, special: bool) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def prompt_for(self, req: GenerationRequest) -> str | list[int]:
        """The context as text or token ids; with a `prefix` (a partial step this model wrote), the partial step
        is appended, so the server continues it (its prefix cache makes that cheap)."""
        prefix = req.prefix
        if self.tokenizer is None:
            return context_text(req.prompt, req.steps, self.separator) + (prefix.text if prefix else "")
        return context_ids(self._encode, self.name, self.separator, req.prompt, req.steps, prefix)

    def payload(self, req: GenerationRequest) -> dict:
        temp, top_p, seed = (req.sampling or Sampling()).over(self.temperature, self.top_p, self.seed)
        sampling = temp > 0
        body: dict[str, Any] = {
            "prompt": self.prompt_for(req),
            "temperature": temp,
            "top_p": top_p if sampling else 1.0,
            "stop": [self.separator],
        }
        if sampling and seed is not None:
            body["seed"] = request_seed(seed, req.seed_source, req.step_index, req.sample)
        if self.api == "completions":
            body.update(max_tokens=req.max_new_tokens, return_token_ids=True)
            if self.model is not None:
                body["model"] = self.model
            if self.want_logprobs:
                body["logprobs"] = self.top_logprobs
        else:  # llama.cpp /completion
            body.update(n_predict=req.max_new_tokens, return_tokens=True, cache_prompt=True)
            if self.want_logprobs:
                body["n_probs"] = self.top_logprobs
        body.update(self.extra_body)
        return body

    # --- calls ----------------------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return self.http.gather([self._tracked(r.key, self._one(r), self._cancelled(r)) for r in requests])

    async def _one(self, req: GenerationRequest) -> Generation:
        from .served_speculation import can_verify, verified_step

        if can_verify(self, req):
            return await verified_step(self, req)
        if req.max_new_tokens <= 0:
            return self._with_prefix(
                req, Generation(text="", stop="length", token_ids=[], logprobs=[], extras={"generator": self.name})
            )
        path = "/v1/completions" if self.api == "completions" else "/completion"
        resp = await self.http.post(path, self.payload(req))
        return self._with_prefix(req, self.parse(resp, path))

    def _with_prefix(self, req: GenerationRequest, g: Generation) -> Generation:
        """The whole step when the request continued a partial one: the partial step, then what the server
        wrote (the server saw the partial step as part of the prompt)."""
        p = req.prefix
        if p is None:
            return g
        known = p.token_ids and (g.token_ids or not g.text)  # ids of both parts known: the step's ids
        ids = list(p.token_ids) + list(g.token_ids) if known and p.token_ids else []
        lps = list(p.logprobs) + list(g.logprobs) if p.logprobs is not None and g.logprobs is not None else None
        extras = dict(g.extras)
        if p.extras.get("entropies") is not None and g.extras.get("entropies") is not None:
            extras["entropies"] = list(p.extras["entropies"]) + list(g.extras["entropies"])
        return Generation(
            text=p.text + g.text, stop=g.stop, token_ids=ids, logprobs=lps, n_prefill=g.n_prefill, extras=extras
        )

    def _cancelled(self, req: GenerationRequest) -> Generation:
        return Generation(
            text="", stop="length", token_ids=[], logprobs=[], extras={"generator": self.name, "cancelled": True}
        )

    async def _tracked(self, key: str, coro, on_cancel):
        """Run one request as a task that `cancel(key)` can cancel (freeing its server slot); a cancelled
        request answers `on_cancel`."""
        task = asyncio.ensure_future(coro)
        self._in_flight.setdefault(key, set()).add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if task.cancelled():
                return on_cancel
            raise
        finally:
            tasks = self._in_flight.get(key)
            if tasks is not None:
                tasks.discard(task)
                if not tasks:
                    self._in_flight.pop(key, None)

    def cancel(self, key: str) -> None:
        """Cancel this problem's requests now on the server (the HTTP connection closes, so the server stops
        generating for it)."""
        loop = event_loop()
        for task in list(self._in_flight.get(key, ())):
            loop.call_soon_threadsafe(task.cancel)

    def parse(self, resp: dict, path: str = "/v1/completions") -> Generation:
        """A Generation from one server answer (a /v1/completions body or a llama.cpp /completion body)."""
        where = self.http.url(path)
        try:
            choice = resp["choices"][0] if "choices" in resp else resp
            text, stop = normalize_finish(choice, self.separator)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BackendError(
                f"{self.http.kind} at {where} answered an unexpected completion: {exc}; body starts {str(resp)[:200]}"
            ) from exc
        ids = choice.get("token_ids") or choice.get("tokens") or []
        ids = [int(t) for t in ids] if all(isinstance(t, int) for t in ids) else []
        extras: dict[str, Any] = {"generator": self.name}
        usage = resp.get("usage") or {}
        if "completion_tokens" in usage:
            extras["completion_tokens"] = usage["completion_tokens"]
        entropies = _entropies(choice)
        if entropies is not None:
            extras["entropies"] = entropies
        return Generation(
            text=text,
            stop=stop,
            token_ids=self._step_ids(ids, text, stop),
            logprobs=_logprobs(choice),
            n_prefill=0,
            extras=extras,
        )

    def _step_ids(self, ids: list[int], text: str, stop: StopReason) -> list[int]:
        """The ids of the step as the in-process backend keeps them: text + separator at a separator stop,
        the text without the end-of-sequence token at eos, everything at the length limit."""
        if not ids:
            return []
        if stop == "eos":
            return ids[:-1]  # servers include the token that ended the sequence
        if stop == "separator":
            if self.tokenizer is None:
                return ids  # cannot check: kept as the server gave them
            if self.tokenizer.decode(ids, skip_special_tokens=False) != text + self.separator:
                return list(self._encode(text + self.separator, False))  # the last token ran past it
        return ids

    # --- judging (StepJudge: the SpecReason-style baseline, arbitrage/target_judge.py) ---------------------
    JUDGE_TOP_LOGPROBS = 20  # vLLM's default cap on logprobs per token

    def judge(self, requests: Sequence[JudgeRequest]) -> list[float]:
        """A 0-9 score per JudgeRequest from the top log-probs of a one-token greedy completion of
        context + draft step + question (digits outside the top 20 count as improbable)."""
        return self.http.gather([self._judge_one(r) for r in requests])

    def judge_payload(self, req) -> dict:
        ctx = self.prompt_for(GenerationRequest(req.key, req.prompt, [*req.steps, req.draft], 1))
        prompt = ctx + req.question if isinstance(ctx, str) else ctx + list(self._encode(req.question, False))
        body: dict[str, Any] = {"prompt": prompt, "temperature": 0.0}
        if self.api == "completions":
            body.update(max_tokens=1, logprobs=self.JUDGE_TOP_LOGPROBS)
            if self.model is not None:
                body["model"] = self.model
        else:
            body.update(n_predict=1, n_probs=self.JUDGE_TOP_LOGPROBS, cache_prompt=True)
        return body

    async def _judge_one(self, req) -> float:
        from ..target_judge import expected_digit, merge_digit_logprobs

        path = "/v1/completions" if self.api == "completions" else "/completion"
        resp = await self.http.post(path, self.judge_payload(req))
        try:
            pairs = first_token_top_logprobs(resp["choices"][0] if "choices" in resp else resp)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BackendError(
                f"{self.http.kind} at {self.http.url(path)} answered a judge request without top "
                f"log-probs ({exc}); body starts {str(resp)[:200]}"
            ) from exc
        return expected_digit(merge_digit_logprobs(pairs))

    def health(self) -> str:
        return self.http.health()

    def release(self, key: str) -> None:
        """Nothing to drop: the server's prefix cache does this work."""

    def close(self) -> None:
        self.http.close()

    def __repr__(self) -> str:
        return f"OpenAICompletionsGenerator({self.http.root!r}, model={self.model!r}, name={self.name!r})"


def _served_tokenizer(root: str | None):
    """vLLM lists the served directory as `root`: when it is on this machine, its tokenizer (else None, and
    prompts go as text)."""
    if not root or not os.path.isdir(root):
        return None
    try:
        return load_tokenizer(root)
    except ModelLoadError as exc:
        log.warning("sending text prompts: %s", exc)
        return None
