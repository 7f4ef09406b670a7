"""Reading what OpenAI-compatible servers answer: why a completion stopped (each server says it its own way),
its per-token log-probs, the top alternatives per token and the entropy estimates probe routers read."""

from __future__ import annotations

import logging
import math

from ..types import StopReason

log = logging.getLogger("arbitrage.backends.openai_compat")


# --- why did the server stop? -----------------------------------------------------------------------------

_warned_ambiguous = False


def normalize_finish(resp: dict, separator: str) -> tuple[str, StopReason]:
    """(step text without the separator, why it stopped) from one completion as a server returns it.

    Accepts a /v1/completions choice (vLLM: finish_reason + stop_reason; SGLang: finish_reason + matched_stop;
    llama.cpp and others: finish_reason alone), a llama.cpp /completion body (stop_type + stopping_word, or
    the older stopped_eos / stopped_word / stopped_limit flags) and an SGLang /generate body (meta_info).
    Raises ValueError for an aborted or unknown finish.
    """
    text = resp.get("text")
    if text is None:
        text = resp.get("content") or ""
    stop = _classify(resp, separator)
    cut = text.find(separator)
    if cut >= 0:  # a server that kept the stop string (or a partial match): the step ends there regardless
        return text[:cut], "separator"
    return text, stop


def _classify(resp: dict, separator: str) -> StopReason:
    if "stop_type" in resp:  # llama.cpp /completion: "eos" | "word" | "limit" | "none"
        kind = resp["stop_type"]
        if kind == "eos":
            return "eos"
        if kind == "word":
            return "separator"
        if kind in ("limit", "none"):
            return "length"
        raise ValueError(f"unknown llama.cpp stop_type {kind!r}")
    if any(k in resp for k in ("stopped_eos", "stopped_word", "stopped_limit")):  # older llama.cpp
        if resp.get("stopped_word"):
            return "separator"
        if resp.get("stopped_eos"):
            return "eos"
        return "length"
    meta = resp.get("meta_info")
    if isinstance(meta, dict) and "finish_reason" in meta:  # SGLang /generate
        fr = meta["finish_reason"] or {}
        kind = fr.get("type")
        if kind == "length":
            return "length"
        if kind == "stop":
            return "separator" if isinstance(fr.get("matched"), str) else "eos"
        raise ValueError(f"SGLang finished with {fr!r}")
    reason = resp.get("finish_reason")
    if reason == "length":
        return "length"
    if reason != "stop":
        raise ValueError(f"finish_reason {reason!r} (expected 'stop' or 'length')")
    for field in ("stop_reason", "matched_stop"):  # vLLM, SGLang: the stop string, a stop token id, or null
        if field in resp:
            return "separator" if isinstance(resp[field], str) else "eos"
    global _warned_ambiguous
    if not _warned_ambiguous:
        _warned_ambiguous = True
        log.warning(
            "the server does not say whether it stopped at the separator or at end-of-sequence "
            "(no stop_reason / matched_stop); assuming the separator. For llama.cpp use api='llamacpp'."
        )
    return "separator"


def _logprobs(resp: dict) -> list[float] | None:
    lp = resp.get("logprobs")
    if isinstance(lp, dict):
        if lp.get("token_logprobs") is not None:  # legacy completions format (vLLM, SGLang)
            return [float(x) if x is not None else 0.0 for x in lp["token_logprobs"]]
        if isinstance(lp.get("content"), list):  # chat-style entries (llama.cpp's /v1/completions)
            return [float(e["logprob"]) for e in lp["content"]]
    probs = resp.get("completion_probabilities")  # llama.cpp /completion with n_probs
    if isinstance(probs, list) and probs and "logprob" in probs[0]:
        return [float(e["logprob"]) for e in probs]
    return None


def per_token_top_logprobs(resp: dict) -> list[list[tuple[str, float]]] | None:
    """(token text, log-prob) of the top alternatives the server returned for each generated token, from any of
    the layouts: legacy completions (vLLM, SGLang, llama-cpp-python: logprobs.top_logprobs = [{token: logprob}]),
    chat-style entries (llama.cpp's /v1/completions: logprobs.content[i].top_logprobs), llama.cpp /completion
    (completion_probabilities[i].top_logprobs, or .probs with probabilities in older releases). A token the
    server gave no alternatives for has []; None when the answer carries no alternatives at all."""
    lp = resp.get("logprobs")
    if isinstance(lp, dict) and isinstance(lp.get("top_logprobs"), list):
        return [
            [(str(t), float(v)) for t, v in e.items() if v is not None] if isinstance(e, dict) else []
            for e in lp["top_logprobs"]
        ]
    if isinstance(lp, dict) and isinstance(lp.get("content"), list):
        entries = lp["content"]
    elif isinstance(resp.get("completion_probabilities"), list):
        entries = resp["completion_probabilities"]
    else:
        return None
    out = []
    for e in entries:
        if isinstance(e.get("top_logprobs"), list):
            out.append([(str(a.get("token", "")), float(a["logprob"])) for a in e["top_logprobs"]])
        elif isinstance(e.get("probs"), list):  # older llama.cpp: probabilities, not log-probabilities
            out.append(
                [(str(a.get("tok_str", "")), math.log(a["prob"]) if a["prob"] > 0 else -math.inf) for a in e["probs"]]
            )
        else:
            out.append([])
    return out


def first_token_top_logprobs(resp: dict) -> list[tuple[str, float]]:
    """The alternatives for the first generated token (what a one-token judge reads); ValueError if none."""
    per_token = per_token_top_logprobs(resp)
    if not per_token or not per_token[0]:
        raise ValueError("no top log-probabilities for the first generated token")
    return per_token[0]


def _entropies(resp: dict) -> list[float] | None:
    """Per-token entropy estimates from the top-k alternatives a server returned with each generated token
    (k >= 2; None when it returned fewer). The tail beyond the top k is counted as one outcome of the
    remaining mass, so this is a lower bound on the true entropy; it is what probe routers read from a served
    draft, and it is computed the same way at training and at run time."""
    per_token = per_token_top_logprobs(resp)
    if not per_token or any(len(t) < 2 for t in per_token):
        return None
    out = []
    for alternatives in per_token:
        ps = [math.exp(lp) for _, lp in alternatives]
        rest = max(0.0, 1.0 - sum(ps))
        out.append(-sum(p * math.log(p) for p in ps if p > 0) - (rest * math.log(rest) if rest > 0 else 0.0))
    return out
