"""Verifying a draft's proposal on a served target (docs/method.md, "Verifying an escalated step").

One request sends the context with the proposal appended and asks for the target's top token at every proposal
position (vLLM: `prompt_logprobs` on /v1/completions; SGLang: `return_logprob` with `logprob_start_len` and
`top_logprobs_num` on /generate); the server's prefix cache makes it cost only the proposal's tokens. The target
keeps the longest prefix equal to its own greedy choice and takes its own token at the first disagreement; a
second request continues the step from there (again reusing the cached prefix). Greedy only: a server returns
no full distributions, so a sampled step is written as usual (lossless either way).

llama.cpp's server has no prompt log-probs; its own draft-model speculation (`llama-server --model-draft ...
--spec-type draft-simple`) is the way to speculate there (docs/speculation.md, with what it measured on a CPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import BackendError
from ..types import Generation, GenerationRequest, Sampling, Step

if TYPE_CHECKING:
    from .openai_compat import OpenAICompletionsGenerator

ROUTES = ("vllm", "sglang")


def can_verify(gen: OpenAICompletionsGenerator, req: GenerationRequest) -> bool:
    """Whether this request's proposal can be verified on this server: greedy, token-id prompts (a local
    tokenizer) and a server that returns the target's top token at prompt positions."""
    if req.speculation is None or gen.verify_route not in ROUTES or gen.tokenizer is None or gen.api != "completions":
        return False
    t, _, _ = (req.sampling or Sampling()).over(gen.temperature, gen.top_p, gen.seed)
    return t == 0 and req.max_new_tokens > 0


def proposal_ids(gen: OpenAICompletionsGenerator, req: GenerationRequest) -> list[int]:
    step = req.speculation
    assert step is not None
    ids = list(gen._encode(step.context_text(gen.separator), False))
    if step.stop == "eos" and gen.tokenizer.eos_token_id is not None:
        ids.append(int(gen.tokenizer.eos_token_id))
    return ids[: req.max_new_tokens]


def _top_token(entry: Any) -> int | None:
    """The rank-1 token of one position's prompt log-probs, in vLLM's layout ({token_id: {logprob, rank, ...}})
    or SGLang's ([[logprob, token_id, text], ...], best first)."""
    if isinstance(entry, dict):
        best = min(entry.items(), key=lambda kv: (kv[1].get("rank") or 10**9, -(kv[1].get("logprob") or -1e9)))
        return int(best[0])
    if isinstance(entry, list) and entry:
        first = entry[0]
        return int(first[1]) if isinstance(first, (list, tuple)) else None
    return None


async def target_choices(gen: OpenAICompletionsGenerator, ctx: list[int], prop: list[int]) -> list[int]:
    """The target's greedy token before each proposal token and after the last one (len(prop) + 1 tokens), from
    one request."""
    if gen.verify_route == "vllm":
        body: dict[str, Any] = {
            "prompt": ctx + prop,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 1,
            "return_token_ids": True,
        }
        if gen.model is not None:
            body["model"] = gen.model
        path = "/v1/completions"
        resp = await gen.http.post(path, body)
        try:
            choice = resp["choices"][0]
            entries = choice["prompt_logprobs"][len(ctx) :]
            after = choice.get("token_ids") or gen._encode(choice["text"], False)
            picks = [_top_token(e) for e in entries] + [int(after[0])]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BackendError(
                f"{gen.http.kind} at {gen.http.url(path)} answered a verification request without "
                f"prompt log-probs ({exc}); body starts {str(resp)[:200]}"
            ) from exc
    else:
        body = {
            "input_ids": ctx + prop,
            "return_logprob": True,
            "logprob_start_len": len(ctx),
            "top_logprobs_num": 1,
            "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
        }
        path = "/generate"
        resp = await gen.http.post(path, body)
        try:
            meta = resp["meta_info"]
            entries = meta["input_top_logprobs"][-len(prop) :] if prop else []
            out = meta["output_token_logprobs"][0]
            picks = [_top_token(e) for e in entries] + [int(out[1])]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BackendError(
                f"{gen.http.kind} at {gen.http.url(path)} answered a verification request without "
                f"input top log-probs ({exc}); body starts {str(resp)[:200]}"
            ) from exc
    tokens = [p for p in picks if p is not None]
    if len(tokens) != len(picks):
        raise BackendError(f"{gen.http.kind} at {gen.http.root} returned prompt log-probs without a top token")
    return tokens


async def verified_step(gen: OpenAICompletionsGenerator, req: GenerationRequest) -> Generation:
    """The target's greedy step, keeping the proposal as far as the target agrees with it."""

    ctx = gen.prompt_for(req)
    assert isinstance(ctx, list)
    prop = proposal_ids(gen, req)
    picks = await target_choices(gen, ctx, prop)
    kept = 0
    while kept < len(prop) and picks[kept] == prop[kept]:
        kept += 1
    committed = prop[:kept] + [picks[kept]]
    stats = {"proposed": len(prop), "kept": kept, "target_forwards": 1, "draft_speculated": 0, "draft_accepted": 0}
    done = _ended(gen, committed, req.max_new_tokens)
    if done is not None:
        g = done
    else:
        head = _prefix_step(gen, committed)
        rest = GenerationRequest(
            req.key,
            req.prompt,
            req.steps,
            req.max_new_tokens - len(committed),
            req.step_index,
            sampling=req.sampling,
            prefix=head,
            sample=req.sample,
            seed_key=req.seed_key,
        )
        g = await gen._one(rest)
        stats["target_forwards"] += max(1, len(g.logprobs or g.token_ids) - len(committed))
    n = len(g.logprobs) if g.logprobs else len(g.token_ids) + (1 if g.stop == "eos" else 0)
    stats["target_written"] = max(0, n - kept)
    g.extras["speculation"] = stats
    return g


def _ended(gen: OpenAICompletionsGenerator, ids: list[int], limit: int) -> Generation | None:
    """The step, when it ends within these committed tokens (at the first eos, separator or the token limit,
    token by token as the server would have stopped)."""
    eos = gen.tokenizer.eos_token_id
    for j in range(len(ids)):
        if eos is not None and ids[j] == eos:
            body = ids[:j]
            return Generation(
                text=gen.tokenizer.decode(body),
                stop="eos",
                token_ids=body,
                logprobs=None,
                extras={"generator": gen.name},
            )
        text = gen.tokenizer.decode(ids[: j + 1])
        cut = text.find(gen.separator)
        if cut >= 0:
            step = text[:cut]
            return Generation(
                text=step,
                stop="separator",
                token_ids=list(gen._encode(step + gen.separator, False)),
                logprobs=None,
                extras={"generator": gen.name},
            )
        if j + 1 >= limit:
            return Generation(
                text=text, stop="length", token_ids=list(ids[: j + 1]), logprobs=None, extras={"generator": gen.name}
            )
    return None


def _prefix_step(gen: OpenAICompletionsGenerator, ids: list[int]):
    """Committed tokens of a step as a partial step of `gen`'s (a request's `prefix`, continued by the server)."""
    return Step(
        author="target",
        text=gen.tokenizer.decode(ids),
        stop="length",
        n_tokens=len(ids),
        token_ids=list(ids),
        extras={"generator": gen.name},
    )
