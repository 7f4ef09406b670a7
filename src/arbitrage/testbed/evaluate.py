"""Measure the testbed models: final-answer accuracy of whole greedy solutions, and the accuracy of single
steps written after the reference prefix, per kind of step (which steps are easy, which only the target
gets, which neither)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import ModelLoadError
from .prm import check_step
from .task import SEPARATOR, Chain, extract_answer, prompt

ROLES = ("draft", "target")


MODEL_DIRS = {"plain": "models", "phrased": "models_phrased"}


def default_models_dir(task: str = "plain") -> Path:
    """The committed trained models of a task (`draft/`, `target/`, `card.json`; the phrased task also `prm/`),
    shipped as package data."""
    return Path(__file__).resolve().parent / MODEL_DIRS[task]


def load_model(models_dir: str | Path, role: str):
    """(model, tokenizer) of `role` from `models_dir`, in eval mode."""
    path = Path(models_dir) / role
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"no {role} model in {path} (train one with `arbitrage testbed train --out DIR`)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval(), tokenizer


@torch.no_grad()
def _greedy(
    model,
    tokenizer,
    texts: Sequence[str],
    max_new_tokens: int,
    stop_ids: list[int],
    batch_size: int,
    desc: str | None = None,
) -> list[str]:
    out = []
    starts = range(0, len(texts), batch_size)
    if desc is not None:
        import sys

        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", file=sys.stderr, leave=False)
    for i in starts:
        enc = tokenizer(list(texts[i : i + batch_size]), return_tensors="pt", padding=True)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        out += tokenizer.batch_decode(gen[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    return out


def solve(
    model, tokenizer, questions: Sequence[str], max_new_tokens: int = 200, batch_size: int = 64, desc: str | None = None
) -> list[str]:
    """Whole greedy solutions (until end-of-sequence) for each question."""
    return _greedy(
        model, tokenizer, [prompt(q) for q in questions], max_new_tokens, [tokenizer.eos_token_id], batch_size, desc
    )


def answer_accuracy(model, tokenizer, chains: Sequence[Chain], batch_size: int = 64, desc: str | None = None) -> float:
    texts = solve(model, tokenizer, [c.question() for c in chains], batch_size=batch_size, desc=desc)
    return sum(extract_answer(t) == str(c.answer) for t, c in zip(texts, chains)) / max(1, len(chains))


def step_accuracy(
    model, tokenizer, chains: Sequence[Chain], batch_size: int = 128, desc: str | None = None
) -> dict[str, dict]:
    """Per kind of step: how often the model's next step after the reference prefix checks as correct."""
    sep_id = tokenizer.convert_tokens_to_ids(SEPARATOR)
    contexts, cases = [], []
    for c in chains:
        steps = c.solution_steps()
        kinds = [o.kind for o in c.ops] + ["answer"]
        for k, kind in enumerate(kinds):
            contexts.append(prompt(c.question()) + "".join(s + SEPARATOR for s in steps[:k]))
            cases.append((c.question(), steps[:k], kind))
    written = _greedy(model, tokenizer, contexts, 40, [sep_id, tokenizer.eos_token_id], batch_size, desc)
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (q, prior, kind), text in zip(cases, written):
        ok = check_step(q, prior, text.split(SEPARATOR)[0])[0]
        for key in (kind, "all"):
            tally[key][0] += ok
            tally[key][1] += 1
    return {k: {"accuracy": round(v[0] / v[1], 3), "n": v[1]} for k, v in sorted(tally.items())}


def evaluate(
    models_dir: str | Path,
    chains: Sequence[Chain],
    steps: bool = True,
    roles: Sequence[str] = ROLES,
    progress: bool = True,
) -> dict[str, dict]:
    """Answer accuracy (and per-kind step accuracy) of each of `roles` in `models_dir` on `chains`."""
    report = {}
    for role in roles:
        model, tokenizer = load_model(models_dir, role)
        acc = answer_accuracy(model, tokenizer, chains, desc=f"{role}: solutions" if progress else None)
        entry = {
            "answer_accuracy": round(acc, 3),
            "n": len(chains),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        if steps:
            entry["step_accuracy"] = step_accuracy(
                model, tokenizer, chains, desc=f"{role}: single steps" if progress else None
            )
        report[role] = entry
    return report
