"""PRM and router on a server: vLLM's pooling runner (POST /pooling), or the embeddings route (POST
/v1/embeddings) that the Arbitrage authors' vLLM plugins served per-token rewards through.

Inputs are tokenized here, with the model's own tokenizer, exactly as the in-process scorers tokenize them
(scoring/hf.py), and sent as token ids; the server returns one output vector per token and we read the one
at the step-end token, which is the last token of each sequence:

* PRM: prefix ("{question}\\n", with special tokens) + each step's text + a step suffix; one sequence per
  candidate, read at the candidate's last suffix token.
* router: `formats.RouterFormat` (author tags, separator after every step), read at the last token;
  y_hat = P(class 1).

Output values: /pooling applies the model's activation (softmaxed [p0, p1] per token for a 2-label token
classifier); the embeddings route of the plugins returns raw logits (one value per token for a value-head
PRM, two for a classifier), flattened. `activation="auto"` turns either into probabilities (softmax for two
or more values, sigmoid for one, nothing when the values already are probabilities).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from ..errors import BackendError, ConfigError
from ..formats import PRMFormat, RouterFormat, read_router_meta
from ..types import DEFAULT_SEPARATOR, RouteRequest, ScoreRequest, Step
from .http_common import HttpClient, load_tokenizer

ROUTES = ("pooling", "embeddings")
ACTIVATIONS = ("auto", "softmax", "sigmoid", "none")


# --- reading server answers -------------------------------------------------------------------------------


def per_token_outputs(item: dict, n_tokens: int, num_labels: int | None = None) -> list[list[float]]:
    """One output vector per token from one `data` entry of a /pooling or /v1/embeddings answer.

    /pooling gives a list of per-token lists (or of numbers for one label); the embeddings route gives one
    flat list, n_tokens * num_labels long, or just num_labels long when the server pooled the last token
    (then only the last position is known, as a one-row list)."""
    values = item.get("data", item.get("embedding"))
    if not isinstance(values, list) or not values:
        raise ValueError(f"no per-token values in {str(item)[:120]}")
    if isinstance(values[0], list):
        return [[float(x) for x in v] for v in values]
    flat = [float(x) for x in values]
    if num_labels is not None:
        if len(flat) == n_tokens * num_labels:
            return [flat[i : i + num_labels] for i in range(0, len(flat), num_labels)]
        if len(flat) == num_labels:
            return [flat]
        raise ValueError(f"{len(flat)} values for {n_tokens} tokens and {num_labels} labels")
    if len(flat) % n_tokens:
        raise ValueError(f"{len(flat)} values do not divide into {n_tokens} tokens; give num_labels")
    k = len(flat) // n_tokens
    return [flat[i : i + k] for i in range(0, len(flat), k)]


def to_probability(values: Sequence[float], activation: str = "auto", label: int = 1, raw: bool = False) -> float:
    """P(label) from one token's output vector. `raw`: the route returns logits (embeddings) rather than the
    model's activated output (/pooling), which decides what "auto" does when it cannot tell by looking."""
    v = list(values)
    if activation == "auto":
        if len(v) == 1:
            activation = "sigmoid" if raw or not 0.0 <= v[0] <= 1.0 else "none"
        else:
            is_probs = all(0.0 <= x <= 1.0 for x in v) and abs(sum(v) - 1.0) < 1e-3
            activation = "none" if is_probs and not raw else "softmax"
    i = 0 if len(v) == 1 else label
    if not 0 <= i < len(v):
        raise ValueError(f"label {label} out of range for {len(v)} outputs per token")
    if activation == "sigmoid":
        return 1.0 / (1.0 + math.exp(-v[i]))
    if activation == "softmax" and len(v) > 1:
        m = max(v)
        return math.exp(v[i] - m) / sum(math.exp(x - m) for x in v)
    return v[i]


# --- the shared client ------------------------------------------------------------------------------------


class _PoolingClient:
    """Sends token-id sequences to /pooling or /v1/embeddings and returns each sequence's last-token vector."""

    def __init__(
        self,
        base_url: str,
        model: str | None,
        *,
        route: str,
        kind: str,
        concurrency: int,
        timeout: float,
        max_retries: int,
        backoff: float,
        api_key: str | None,
        task: str | None,
        num_labels: int | None,
        tokenizer: Any,
        check: bool,
        transport=None,
    ):
        if route not in ROUTES:
            raise ConfigError(f"route must be one of {ROUTES}, not {route!r}")
        self.route, self.task, self.num_labels = route, task, num_labels
        self.http = HttpClient(
            base_url,
            kind=kind,
            concurrency=concurrency,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            api_key=api_key,
            transport=transport,
        )
        self.model, root = model, None
        if check:
            listing = self.http.probe()
            served = {m.get("id"): m.get("root") for m in (listing or {}).get("data", []) if isinstance(m, dict)}
            if self.model is None:
                self.model, root = next(iter(served.items()), (None, None))
            elif served and self.model not in served:
                raise BackendError(
                    f"{kind} at {self.http.root} does not serve {self.model!r}; it serves "
                    f"{', '.join(map(repr, served))}"
                )
            else:
                root = served.get(self.model)
        if tokenizer is None:  # vLLM lists the served directory as `root`: usable when it is on this machine
            tokenizer = root if root and os.path.isdir(root) else self.model
            if tokenizer is None:
                raise ConfigError(f"{kind} at {self.http.root}: give the tokenizer (a local path or hub id)")
        self.tokenizer_path = tokenizer if isinstance(tokenizer, str) else None
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.encode = lru_cache(maxsize=65536)(self._encode)

    def _encode(self, text: str, special: bool = False) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    @property
    def path(self) -> str:
        return "/pooling" if self.route == "pooling" else "/v1/embeddings"

    def body(self, seqs: Sequence[Sequence[int]]) -> dict:
        body: dict[str, Any] = {"input": [list(s) for s in seqs]}
        if self.model is not None:
            body["model"] = self.model
        if self.route == "pooling":
            if self.task:
                body["task"] = self.task
        else:
            body["encoding_format"] = "float"
        return body

    def last_vectors(self, batches: Sequence[Sequence[Sequence[int]]]) -> list[list[list[float]]]:
        """For each batch (one HTTP request each, sent concurrently), the last-token vector of each sequence."""
        answers = self.http.post_many(self.path, [self.body(b) for b in batches])
        out = []
        for seqs, resp in zip(batches, answers):
            try:
                data = sorted(resp["data"], key=lambda d: d.get("index", 0))
                if len(data) != len(seqs):
                    raise ValueError(f"{len(data)} outputs for {len(seqs)} inputs")
                out.append([per_token_outputs(d, len(s), self.num_labels)[-1] for d, s in zip(data, seqs)])
            except (KeyError, TypeError, ValueError) as exc:
                raise BackendError(
                    f"{self.http.kind} at {self.http.url(self.path)} answered unexpectedly: {exc}; "
                    f"body starts {json.dumps(resp)[:200]}"
                ) from exc
        return out

    def close(self) -> None:
        self.http.close()


# --- PRM and router ---------------------------------------------------------------------------------------


class _Served:
    """What both served scorers answer about their server."""

    client: _PoolingClient

    def health(self) -> str:
        return self.client.http.health()


class PoolingPRM(_Served):
    """A StepScorer on a served PRM. For a 2-label token classifier: vLLM `--runner pooling`, route "pooling".
    For a value-head PRM served through an embeddings plugin (Skywork's): route "embeddings", num_labels=1."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        tokenizer: Any = None,
        fmt: str | Any = "skywork",
        separator: str = DEFAULT_SEPARATOR,
        route: str = "pooling",
        activation: str = "auto",
        label: int = 1,
        num_labels: int | None = None,
        task: str | None = "token_classify",
        concurrency: int = 16,
        timeout: float = 300.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        api_key: str | None = None,
        name: str = "prm",
        check: bool = True,
        transport=None,
    ):
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
        self.name, self.activation, self.label = name, activation, label
        self.max_concurrent_calls = concurrency  # the server batches concurrent calls itself (engine lanes)
        self.fmt = PRMFormat.named(fmt, separator) if isinstance(fmt, str) else fmt
        self.client = _PoolingClient(
            base_url,
            model,
            route=route,
            kind=f"{name} server",
            concurrency=concurrency,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            api_key=api_key,
            task=task,
            num_labels=num_labels,
            tokenizer=tokenizer,
            check=check,
            transport=transport,
        )

    def row_ids(self, question: str, steps: Sequence[Step], candidate: Step) -> list[int]:
        return self.fmt.row_ids(self.client.encode, question, steps, candidate)

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        batches = [[self.row_ids(r.question, r.steps, c) for c in r.candidates] for r in requests]
        todo = [i for i, b in enumerate(batches) if b]
        vecs = dict(zip(todo, self.client.last_vectors([batches[i] for i in todo])))
        raw = self.client.route == "embeddings"
        return [
            [to_probability(v, self.activation, self.label, raw) for v in vecs.get(i, [])] for i in range(len(requests))
        ]

    def release(self, key: str) -> None:
        """Nothing to drop: the server's prefix cache does this work."""

    def close(self) -> None:
        self.client.close()


class PoolingRouter(_Served):
    """A Router on a served 2-label token classifier (vLLM `--runner pooling`); y_hat = P(class 1) at the
    last token. `separator` / `author_tags` default to what the router was trained with (arbitrage_router.json
    beside its tokenizer), else "\\n\\n" and True."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        tokenizer: Any = None,
        separator: str | None = None,
        author_tags: bool | None = None,
        route: str = "pooling",
        activation: str = "auto",
        label: int = 1,
        num_labels: int | None = None,
        task: str | None = "token_classify",
        concurrency: int = 16,
        timeout: float = 300.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        api_key: str | None = None,
        name: str = "router",
        check: bool = True,
        transport=None,
    ):
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
        self.name, self.activation, self.label = name, activation, label
        self.max_concurrent_calls = concurrency  # the server batches concurrent calls itself (engine lanes)
        self.client = _PoolingClient(
            base_url,
            model,
            route=route,
            kind=f"{name} server",
            concurrency=concurrency,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            api_key=api_key,
            task=task,
            num_labels=num_labels,
            tokenizer=tokenizer,
            check=check,
            transport=transport,
        )
        path = self.client.tokenizer_path
        meta = read_router_meta(path) if path and os.path.isdir(os.path.expanduser(path)) else None
        fmt = RouterFormat.from_meta(meta)
        self.fmt = RouterFormat(
            separator if separator is not None else fmt.separator,
            author_tags if author_tags is not None else fmt.author_tags,
        )

    @property
    def separator(self) -> str:
        return self.fmt.separator

    @property
    def author_tags(self) -> bool:
        return self.fmt.author_tags

    def row_ids(self, request: RouteRequest) -> list[int]:
        return self.fmt.row_ids(self.client.encode, request.question, request.steps, request.draft)

    def predict(self, requests: Sequence[RouteRequest]) -> list[float]:
        vecs = self.client.last_vectors([[self.row_ids(r)] for r in requests])
        raw = self.client.route == "embeddings"
        return [to_probability(v[0], self.activation, self.label, raw) for v in vecs]

    def release(self, key: str) -> None:
        """Nothing to drop: the server's prefix cache does this work."""

    def close(self) -> None:
        self.client.close()
