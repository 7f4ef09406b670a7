"""A judge PRM: a causal LM on a completions server scores a step by how likely it says the step is correct.

No trained math PRM may be at hand (offline CPU machines, llama.cpp servers). Then any instruction-tuned model
(usually the target) can serve as one: for each candidate step it reads a short judging prompt (the problem,
the solution so far, the candidate step, "Is the next step correct? Answer yes or no.") and the step's score is

    P(yes) / (P(yes) + P(no))

from the top log-probabilities of the model's first answer token (one generated token, greedy). Every
spelling of the verdict in the top-k counts ("Yes", " yes", "YES" ...). A verdict missing from the top-k is
given the probability of the least likely listed token (an upper bound on its mass), so one present verdict
never turns into an exact 0 or 1; when neither is listed the score is 0.5 and `n_undecided` counts it.

The judging prompt is raw text (no server-side chat template), by default the Qwen ChatML layout; give
`template` with {question}, {step} and either {prefix} (the earlier steps, each followed by the separator;
empty at the first step) or {steps} (the earlier steps joined by the separator, "(nothing yet)" at the first
step) for other models. The default writes the solution as it grows, the candidate last: the judging prompt of
step k+1 then starts with the judging prompt of step k's kept step, so a server that caches prompt prefixes
(vLLM --enable-prefix-caching, llama.cpp cache_prompt) computes only the new candidate and the question.
(A layout with the earlier steps and the candidate under separate headings recomputes the previous step too:
about twice the tokens per call, the judge's main cost on a CPU.)

Servers: `api="completions"` POSTs /v1/completions with max_tokens=1 and logprobs=k (vLLM, SGLang, llama.cpp's
llama-server); `api="llamacpp"` POSTs llama-server's /completion with n_predict=1 and n_probs=k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import BackendError, ConfigError
from ..types import ScoreRequest, Step
from .http_common import HttpClient
from .openai_compat import first_token_top_logprobs

APIS = ("completions", "llamacpp")

QWEN_JUDGE = (
    "<|im_start|>system\nYou are a careful math teacher. You check a student's solution one step at a time."
    "<|im_end|>\n<|im_start|>user\nProblem:\n{question}\n\nSolution:\n{prefix}{step}\n\n"
    "Is the last step of this solution correct? Answer yes or no.<|im_end|>\n<|im_start|>assistant\n"
)
NO_STEPS = "(nothing yet)"
YES_WORDS = frozenset({"yes", "correct", "true"})
NO_WORDS = frozenset({"no", "incorrect", "wrong", "false"})


def verdict_of(token: str) -> str | None:
    """'yes', 'no' or None for one answer token as a server spells it (leading space, case, full stop)."""
    word = token.strip().strip(".,:!*\"'").lower()
    if word in YES_WORDS:
        return "yes"
    if word in NO_WORDS:
        return "no"
    return None


def top_logprobs(resp: dict) -> list[tuple[str, float]]:
    """(token, log-prob) of the candidates for the first generated token, in any layout the served generator
    reads (backends.openai_compat.per_token_top_logprobs), from a whole answer or one of its choices."""
    choice = resp["choices"][0] if isinstance(resp.get("choices"), list) and resp["choices"] else resp
    return first_token_top_logprobs(choice)


def judge_score(candidates: list[tuple[str, float]]) -> float | None:
    """P(yes) / (P(yes) + P(no)) from the top-k of the first answer token; None when neither verdict is
    listed. A verdict that is missing gets the smallest listed probability (it is at most that)."""
    mass = {"yes": 0.0, "no": 0.0}
    seen = {"yes": False, "no": False}
    floor = min((math.exp(lp) for _, lp in candidates), default=0.0)
    for token, lp in candidates:
        v = verdict_of(token)
        if v is not None:
            mass[v] += math.exp(lp)
            seen[v] = True
    if not seen["yes"] and not seen["no"]:
        return None
    for v in mass:
        if not seen[v]:
            mass[v] = floor
    total = mass["yes"] + mass["no"]
    return mass["yes"] / total if total > 0 else None


class JudgePRM:
    """A StepScorer that asks a served causal LM whether each candidate step is correct.

    `base_url`: the server (http://HOST:PORT or .../v1). `model`: the served name (None: the server's first,
    or the server's only model). `template`: the judging prompt with {question}, {steps}, {step}.
    `separator`: follows each earlier step in the prompt. `top_k`: how many top log-probs to ask for.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        template: str = QWEN_JUDGE,
        separator: str = "\n\n",
        api: str = "completions",
        top_k: int = 20,
        concurrency: int = 16,
        timeout: float = 600.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        api_key: str | None = None,
        name: str | None = None,
        check: bool = True,
        transport=None,
    ):
        if api not in APIS:
            raise ConfigError(f"judge api must be one of {APIS}, not {api!r}")
        for field in ("{question}", "{step}"):
            if field not in template:
                raise ConfigError(f"the judge template must contain {field}")
        if "{steps}" not in template and "{prefix}" not in template:
            raise ConfigError("the judge template must contain {prefix} or {steps} (the earlier steps)")
        if top_k < 2:
            raise ConfigError("the judge needs top_k >= 2 log-probs")
        self.template, self.separator, self.api, self.top_k = template, separator, api, top_k
        self.max_concurrent_calls = concurrency  # the server batches concurrent calls itself (engine lanes)
        self.http = HttpClient(
            base_url,
            kind="judge PRM server",
            concurrency=concurrency,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            api_key=api_key,
            transport=transport,
        )
        self.model = model
        if check:
            listing = self.http.probe()
            served = [m.get("id") for m in (listing or {}).get("data", []) if isinstance(m, dict)]
            if self.model is None and served:
                self.model = served[0]
            elif self.model is not None and served and self.model not in served:
                raise BackendError(
                    f"judge PRM server at {self.http.root} does not serve {self.model!r}; "
                    f"it serves {', '.join(map(repr, served))}"
                )
        self.name = name or f"judge:{self.http.root}"
        self.n_calls = 0
        self.n_undecided = 0  # candidates where neither verdict was among the top-k (scored 0.5)

    def health(self) -> str:
        return self.http.health()

    def prompt(self, question: str, steps: Sequence[Step], candidate: Step) -> str:
        texts = [s.text.strip() for s in steps]
        return self.template.format(
            question=question.strip(),
            step=candidate.text.strip(),
            steps=self.separator.join(texts) if texts else NO_STEPS,
            prefix="".join(t + self.separator for t in texts),
        )

    def payload(self, prompt: str) -> dict:
        if self.api == "completions":
            body: dict[str, Any] = {"prompt": prompt, "max_tokens": 1, "temperature": 0.0, "logprobs": self.top_k}
            if self.model is not None:
                body["model"] = self.model
            return body
        return {"prompt": prompt, "n_predict": 1, "temperature": 0.0, "n_probs": self.top_k, "cache_prompt": True}

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        prompts = [(i, self.prompt(r.question, r.steps, c)) for i, r in enumerate(requests) for c in r.candidates]
        scores = self.http.gather([self._one(p) for _, p in prompts])
        out: list[list[float]] = [[] for _ in requests]
        for (i, _), s in zip(prompts, scores):
            out[i].append(s)
        return out

    async def _one(self, prompt: str) -> float:
        path = "/v1/completions" if self.api == "completions" else "/completion"
        resp = await self.http.post(path, self.payload(prompt))
        self.n_calls += 1
        try:
            s = judge_score(top_logprobs(resp))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BackendError(
                f"judge PRM server at {self.http.url(path)} answered without usable top "
                f"log-probs ({exc}); body starts {str(resp)[:200]}"
            ) from exc
        if s is None:
            self.n_undecided += 1
            return 0.5
        return s

    def release(self, key: str) -> None:
        """Nothing to drop: the server's prefix cache does this work."""

    def close(self) -> None:
        self.http.close()

    def __repr__(self) -> str:
        return f"JudgePRM({self.http.root!r}, model={self.model!r}, api={self.api!r})"
