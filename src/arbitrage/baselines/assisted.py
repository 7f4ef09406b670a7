"""Token-level speculative decoding as an outside baseline: transformers' assisted generation
(`target.generate(..., assistant_model=draft)`), greedy, so its output is the target's own greedy output.

This is what a user would otherwise pick to speed up the same target with the same draft. It writes the
same `results.jsonl` / `metrics.json` layout as `arbitrage run`, so a sweep can put it next to the step
policies:
- one problem at a time (transformers' assisted generation takes batch size 1), latency = wall clock of
  the whole `generate` call per problem, the same measure as the paper's batch-size-1 latency;
- the output is split at the step separator into steps (all written by the target: `escalated` is False
  and the metrics' `escalation_rate` is None, since there is no step-level choice); each step's `n_tokens`
  is its re-tokenized length, while `target_tokens` counts the generated tokens exactly;
- `seconds` splits the time into the draft's and the target's forward passes (forward hooks);
  `target_calls` / `draft_calls` count forward passes, and `draft_tokens_accepted` is derived from them
  (each target pass adds exactly one token of its own; the rest of the output is accepted draft tokens).
Limits: the run's `max_total_tokens` bounds the output and `max_steps` stops it at that many separators;
`max_step_tokens` has no counterpart (there are no steps while decoding).
"""

from __future__ import annotations

import time

import torch

from ..errors import ConfigError
from ..problem import ProblemResult, new_counts
from ..records import StepRecord
from ..timing import ForwardTimer
from ..types import Problem, StopReason

NAME = "assisted"


class _MaxSeparators:
    """Stop once the new text holds `max_steps` separators (the step engine's max_steps). The text is decoded
    incrementally (only the tokens added since the last check), so checking costs no more as the output grows."""

    def __init__(self, tokenizer, start: int, separator: str, max_steps: int):
        self.tokenizer, self.start, self.separator, self.max_steps = tokenizer, start, separator, max_steps
        self.seen, self.text = start, ""

    def __call__(self, input_ids, scores, **kw):
        ids = input_ids[0].tolist()
        if len(ids) > self.seen:
            lo = max(self.start, self.seen - 4)  # a few tokens back, so a split multi-byte character decodes
            old = self.tokenizer.decode(ids[lo : self.seen], skip_special_tokens=True)
            new = self.tokenizer.decode(ids[lo:], skip_special_tokens=True)
            if new.startswith(old):
                self.text += new[len(old) :]
            else:
                self.text = self.tokenizer.decode(ids[self.start :], skip_special_tokens=True)
            self.seen = len(ids)
        done = self.text.count(self.separator) >= self.max_steps
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def check_in_process(draft, target) -> None:
    for role, g in (("draft", draft), ("target", target)):
        if g is None or not hasattr(g, "model") or not hasattr(g, "tokenizer"):
            raise ConfigError(
                f"the assisted-generation baseline needs an in-process {role} model (a local "
                f"directory or hub id), not a server"
            )


def split_steps(text: str, separator: str, max_steps: int) -> tuple[list[tuple[str, str]], bool]:
    """(step text, stop) pairs as the step engine would record them, and whether max_steps cut the text."""
    parts = text.split(separator)
    steps = [(p, "separator") for p in parts[:-1]] + ([(parts[-1], "end")] if parts[-1] else [])
    return steps[:max_steps], len(steps) > max_steps


def generate_one(
    draft,
    target,
    problem: Problem,
    separator: str,
    max_new_tokens: int,
    max_steps: int,
    timers: tuple[ForwardTimer, ForwardTimer],
) -> ProblemResult:
    """Assisted generation of one solution, as the step engine's result for that problem."""
    from transformers import GenerationConfig, StoppingCriteriaList

    tok = target.tokenizer
    ids = list(target.encode(problem.prompt, True))
    inputs = torch.tensor([ids], device=target.device)
    eos = sorted(target.eos_ids)
    gcfg = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos or None, pad_token_id=target.pad_id
    )
    stop = StoppingCriteriaList([_MaxSeparators(tok, len(ids), separator, max_steps)])
    extra = {}
    if draft.tokenizer.get_vocab() != tok.get_vocab():  # different vocabularies: universal assisted decoding
        extra = {"tokenizer": tok, "assistant_tokenizer": draft.tokenizer}
    for t in timers:
        t.reset()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = target.model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            generation_config=gcfg,
            assistant_model=draft.model,
            stopping_criteria=stop,
            **extra,
        )
    if target.device.type == "cuda":
        torch.cuda.synchronize()
    latency = time.perf_counter() - t0
    new = out[0, len(ids) :].tolist()
    cut = next((i for i, t in enumerate(new) if t in target.eos_ids), None)
    new = new if cut is None else new[:cut]
    pieces, truncated = split_steps(tok.decode(new, skip_special_tokens=False), separator, max_steps)
    if cut is not None:
        finish = "eos"
    elif truncated or (len(pieces) >= max_steps and pieces[-1][1] == "separator"):
        finish = "max_steps"
    else:
        finish = "budget"
    draft_t, target_t = timers
    accepted = max(0, len(new) - target_t.calls)
    records = []
    for i, (piece, kind) in enumerate(pieces):
        stop_reason: StopReason = "separator" if kind == "separator" else ("eos" if finish == "eos" else "length")
        n = len(target.encode(piece + (separator if kind == "separator" else ""), False))
        records.append(StepRecord(index=i, author="target", text=piece, stop=stop_reason, n_tokens=n, escalated=False))
    solution = "".join(r.text + (separator if r.stop == "separator" else "") for r in records)
    counts = new_counts()
    counts.update(
        draft_tokens_accepted=accepted,
        draft_tokens_discarded=max(0, draft_t.calls - accepted),
        target_tokens=len(new),
        target_calls=target_t.calls,
        draft_calls=draft_t.calls,
    )
    seconds = {"draft": draft_t.seconds, "target": target_t.seconds, "prm": 0.0, "router": 0.0, "judge": 0.0}
    return ProblemResult(problem, [r.to_step() for r in records], records, finish, latency, seconds, counts, solution)


class AssistedRunner:
    """Produces results like the step engine does (`run(problems, on_done)`), one problem at a time, for
    run.py's resumable loop."""

    def __init__(self, cfg, draft, target):
        if cfg.model_options.temperature > 0:
            raise ConfigError("the assisted-generation baseline is greedy only (lossless); use --temperature 0")
        check_in_process(draft, target)
        self.draft, self.target, self.engine = draft, target, cfg.engine

    def run(self, problems, on_done) -> None:
        timers = (ForwardTimer(self.draft.model), ForwardTimer(self.target.model))
        e = self.engine
        try:
            for p in problems:
                on_done(generate_one(self.draft, self.target, p, e.separator, e.max_total_tokens, e.max_steps, timers))
        finally:
            for t in timers:
                t.remove()
