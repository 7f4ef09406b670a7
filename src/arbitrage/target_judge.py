"""The target as a judge of a draft step (SpecReason-style): the judging question and how a 0-9 score is read.

A `Judge` action (policies.py) asks the judge model (the target, through the `StepJudge` protocol) for a 0-9
score of the draft step in context. The model
appends the draft step and a short judging question to the problem's context and reads its next-token
distribution over the digit tokens "0".."9" (one forward pass, no sampling). The score is the expected
digit under that distribution renormalised over the digits, so it is continuous in [0, 9] and a threshold
between two integers still separates steps.

Backends implement `judge(requests: Sequence[JudgeRequest]) -> list[float]` (in-process: backends/hf.py;
servers: backends/openai_compat.py via top log-probs of a one-token completion). (Not to be confused with
`backends.judge_prm`, a PRM made of a served LM asked "is this step correct?".)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

# Appended after the draft step (which already ends with the separator when it stopped there). It ends with
# "Score: " so that the next token is the digit itself for tokenizers that split digits (Qwen, Llama-3).
JUDGE_QUESTION = (
    "[Review] Judge only the last step above: is it correct and does it follow from the earlier "
    "steps? Answer with one digit from 0 (wrong) to 9 (certainly correct).\nScore: "
)

DIGITS = tuple(str(d) for d in range(10))


def expected_digit(digit_logprobs: Mapping[int, float]) -> float:
    """The expected digit under log-probabilities given for some of the digits 0..9, renormalised over the
    digits present. No digit at all (nothing to judge by) scores 0, the lowest score, so the step is redone."""
    items = [(d, lp) for d, lp in digit_logprobs.items() if lp is not None and math.isfinite(lp)]
    if not items:
        return 0.0
    top = max(lp for _, lp in items)
    weights = [(d, math.exp(lp - top)) for d, lp in items]
    total = sum(w for _, w in weights)
    return sum(d * w for d, w in weights) / total


def digit_of(token_text: str) -> int | None:
    """The digit a token stands for ("7", " 7", "Ġ7" in byte-level vocabularies), else None."""
    s = token_text.replace("\u0120", " ").replace("\u2581", " ").strip()
    return int(s) if len(s) == 1 and s in DIGITS else None


def merge_digit_logprobs(pairs: Iterable[tuple[str, float]]) -> dict[int, float]:
    """Log-probabilities per digit from (token text, log-prob) pairs; tokens for the same digit ("7" and " 7")
    add up their probabilities."""
    out: dict[int, float] = {}
    for text, lp in pairs:
        d = digit_of(text)
        if d is None or lp is None:
            continue
        out[d] = lp if d not in out else _logaddexp(out[d], lp)
    return out


def _logaddexp(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def digit_token_ids(tokenizer) -> dict[int, list[int]]:
    """For each digit, the single-token ids that stand for it (with and without a leading space)."""
    table: dict[int, list[int]] = {}
    for d in range(10):
        ids = set()
        for text in (str(d), " " + str(d)):
            enc = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(enc) == 1:
                ids.add(int(enc[0]))
        table[d] = sorted(ids)
    if not any(table.values()):
        raise ValueError("the tokenizer has no single-token digits; a 0-9 judge score cannot be read")
    return table
