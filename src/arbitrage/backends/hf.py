"""In-process transformers backend: loading models and writing steps with per-problem KV reuse.

A problem's cache survives between its steps; a step written by the other model is appended by prefilling
only its new tokens (the common prefix with the cached ids is reused, the rest is computed). Many problems
that wait on the same model go through one batched forward pass (see `kv.KVBatch`).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch

from ..errors import ModelLoadError
from ..types import Generation, GenerationRequest, Step
from .kv import KVBatch, SlotStore


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_model_source(path_or_id: str) -> None:
    """Fail early, with one clear line, on a model that is neither a local directory nor a hub id."""
    if os.path.isdir(os.path.expanduser(path_or_id)):
        return
    if path_or_id.startswith((".", "/", "~")) or not _HUB_ID.match(path_or_id):
        raise ModelLoadError(f"model path {path_or_id!r} does not exist (give a local directory or a Hugging Face "
                             f"id such as Qwen/Qwen2.5-Math-1.5B-Instruct)")


def _load_failure(what: str, path_or_id: str, exc: Exception) -> ModelLoadError:
    where = "local directory" if os.path.isdir(os.path.expanduser(path_or_id)) else \
        "Hugging Face id (not a local directory; the hub may be unreachable or have no such model)"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(f"cannot load {what} from {path_or_id!r} as a {where}: {first}")


def load_tokenizer(path_or_id: str):
    from transformers import AutoTokenizer

    check_model_source(path_or_id)
    try:
        tok = AutoTokenizer.from_pretrained(os.path.expanduser(path_or_id))
    except Exception as exc:  # transformers raises many kinds; the user needs the id and the cause
        raise _load_failure("a tokenizer", path_or_id, exc) from exc
    return tok


def load_model(path_or_id: str, auto_class: str = "AutoModelForCausalLM", device: str | None = "auto",
               dtype: str | None = "auto", **kwargs):
    import transformers

    check_model_source(path_or_id)
    dev = resolve_device(device)
    cls = getattr(transformers, auto_class)
    # transformers >= 4.56 calls it `dtype`, older releases `torch_dtype`.
    dtype_kw = "dtype" if tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56) else "torch_dtype"
    kwargs[dtype_kw] = resolve_dtype(dtype, dev)
    try:
        model = cls.from_pretrained(os.path.expanduser(path_or_id), **kwargs)
    except Exception as exc:
        raise _load_failure(auto_class, path_or_id, exc) from exc
    return model.to(dev).eval()


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(src, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return ids


def _seed_for(seed: int, key: str, step_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{key}:{step_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class CallStats:
    """What one request cost: tokens prefilled (computed before decoding), reused from cache, generated."""

    key: str
    n_prefill: int
    n_reused: int
    n_generated: int


class HFGenerator:
    """Writes one step per request with a transformers causal LM (draft or target)."""

    def __init__(self, model, tokenizer, *, name: str = "model", separator: str = "\n\n", temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, reuse_cache: bool = True, return_hidden: bool = False,
                 max_cached_problems: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.name, self.separator = name, separator
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.reuse_cache, self.return_hidden = reuse_cache, return_hidden
        self.device = next(model.parameters()).device
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(self.eos_ids), 0))
        self.store = SlotStore(max_entries=1)
        self.stats: list[CallStats] = []
        self.max_cached_problems = max_cached_problems

    @classmethod
    def from_pretrained(cls, path_or_id: str, *, device: str | None = "auto", dtype: str | None = "auto", **kw):
        tokenizer = load_tokenizer(path_or_id)
        model = load_model(path_or_id, "AutoModelForCausalLM", device=device, dtype=dtype)
        return cls(model, tokenizer, **kw)

    # --- token ids of a context -------------------------------------------------------------------------
    @lru_cache(maxsize=65536)
    def _encode(self, text: str, special: bool) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def context_ids(self, prompt: str, steps: Sequence[Step]) -> list[int]:
        """The prompt's ids, then each step's: the author's own ids when this model wrote it, else re-tokenized."""
        ids = list(self._encode(prompt, True))
        for step in steps:
            own = step.token_ids is not None and step.extras.get("generator") == self.name
            ids += step.token_ids if own else self._encode(step.context_text(self.separator), False)
        return ids

    # --- generation -------------------------------------------------------------------------------------
    def _forward(self, inputs, mask, positions, cache, last_only=True):
        out = self.model(input_ids=inputs, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, output_hidden_states=self.return_hidden)
        logits = out.logits[:, -1].float()
        hidden = out.hidden_states[-1][:, -1].float() if self.return_hidden else None
        return logits, hidden

    def _pick(self, logits: torch.Tensor, gens: list[torch.Generator | None]) -> torch.Tensor:
        if self.temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / self.temperature, -1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(-1, descending=True)
            cut = sorted_p.cumsum(-1) - sorted_p > self.top_p
            sorted_p[cut] = 0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.stack([torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, gens)])

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        results: list[Generation | None] = [None] * len(requests)
        active = []
        for i, req in enumerate(requests):
            if req.max_new_tokens <= 0:
                results[i] = Generation(text="", stop="length", token_ids=[], logprobs=[])
            else:
                active.append(i)
        if not active:
            return results  # type: ignore[return-value]
        full = {i: self.context_ids(requests[i].prompt, requests[i].steps) for i in active}
        pasts, news = [], []
        for i in active:
            entry, n = self.store.best(requests[i].key, full[i]) if self.reuse_cache else (None, 0)
            entry = entry.crop(n) if entry is not None and n > 0 else None
            pasts.append(entry)
            news.append(full[i][n:])
            self.stats.append(CallStats(requests[i].key, len(full[i]) - n, n, 0))
        stat_of = {i: self.stats[-len(active) + j] for j, i in enumerate(active)}
        batch = KVBatch(lambda *a, **k: self._forward(*a, **k), pasts, news, self.pad_id, self.device)
        logits, hidden = batch.prefill()
        gens = []
        for i in active:
            if self.temperature > 0:
                g = torch.Generator(device=self.device)
                g.manual_seed(_seed_for(self.seed, requests[i].key, requests[i].step_index))
                gens.append(g)
            else:
                gens.append(None)
        rows = list(active)  # request index of each batch row
        out_ids: dict[int, list[int]] = {i: [] for i in active}
        logps: dict[int, list[float]] = {i: [] for i in active}
        ents: dict[int, list[float]] = {i: [] for i in active}
        while rows:
            tokens = self._pick(logits, gens)
            logp = torch.log_softmax(logits, -1)
            chosen_lp = logp.gather(1, tokens[:, None])[:, 0].tolist()
            entropy = (-(logp.exp() * logp).sum(-1)).tolist()
            keep = []
            for r, i in enumerate(rows):
                t = int(tokens[r])
                out_ids[i].append(t)
                logps[i].append(chosen_lp[r])
                ents[i].append(entropy[r])
                done = self._finish(requests[i], out_ids[i], logps[i], ents[i], t,
                                    None if hidden is None else hidden[r])
                if done is None:
                    keep.append(r)
                    continue
                done.n_prefill = stat_of[i].n_prefill
                stat_of[i].n_generated = len(out_ids[i])
                results[i] = done
                if self.reuse_cache:
                    self.store.put(requests[i].key, batch.row(r))
            if not keep:
                break
            if len(keep) < len(rows):
                batch.select(keep)
                gens = [gens[r] for r in keep]
                rows = [rows[r] for r in keep]
            logits, hidden = batch.decode(torch.tensor([out_ids[i][-1] for i in rows], device=self.device))
        return results  # type: ignore[return-value]

    def _finish(self, req: GenerationRequest, ids: list[int], logps: list[float], ents: list[float], last: int,
                hidden: torch.Tensor | None) -> Generation | None:
        """A Generation if this row's step is complete after token `last`, else None."""
        extras: dict = {"generator": self.name, "entropies": list(ents)}
        if hidden is not None:
            extras["last_hidden"] = hidden.tolist()
        if last in self.eos_ids:
            body = ids[:-1]
            text = self.tokenizer.decode(body, skip_special_tokens=False)
            if self.separator not in text:
                return Generation(text=text, stop="eos", token_ids=body, logprobs=list(logps), extras=extras)
        # The separator can first appear only around the newest token: look at a short tail of the step
        # before decoding all of it (decoding the whole step at every token is quadratic in its length).
        tail = self.tokenizer.decode(ids[-(2 * len(self.separator) + 4):], skip_special_tokens=False)
        if self.separator not in tail and len(ids) < req.max_new_tokens:
            return None
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        cut = text.find(self.separator)
        if cut >= 0:
            step_text = text[:cut]
            own = ids if text == step_text + self.separator else \
                list(self._encode(step_text + self.separator, False))  # the last token ran past the separator
            return Generation(text=step_text, stop="separator", token_ids=own, logprobs=list(logps), extras=extras)
        if len(ids) >= req.max_new_tokens:
            return Generation(text=text, stop="length", token_ids=list(ids), logprobs=list(logps), extras=extras)
        return None

    # --- judging (SpecReason-style baseline, arbitrage/judge.py) ------------------------------------------
    @torch.no_grad()
    def judge(self, requests) -> list[float]:
        """A 0-9 score per JudgeRequest: one forward pass over context + draft step + question (only the tokens
        past this problem's cached prefix are computed), read as the expected digit of the next token. The
        judged row is cached like a step, so a following generation or judgement reuses its prefix."""
        from ..judge import digit_token_ids, expected_digit

        if not requests:
            return []
        if getattr(self, "_digit_ids", None) is None:
            self._digit_ids = digit_token_ids(self.tokenizer)
        pasts, news, rows = [], [], []
        for req in requests:
            ids = self.context_ids(req.prompt, [*req.steps, req.draft]) + list(self._encode(req.question, False))
            entry, n = self.store.best(req.key, ids) if self.reuse_cache else (None, 0)
            pasts.append(entry.crop(n) if entry is not None and n > 0 else None)
            news.append(ids[n:])
            rows.append(req.key)
            self.stats.append(CallStats(req.key, len(ids) - n, n, 0))
        batch = KVBatch(lambda *a, **k: self._forward(*a, **k), pasts, news, self.pad_id, self.device)
        logits, _ = batch.prefill()
        logp = torch.log_softmax(logits.float(), -1)
        scores = []
        for r, key in enumerate(rows):
            per_digit = {d: float(torch.logsumexp(logp[r, ids], 0)) for d, ids in self._digit_ids.items() if ids}
            scores.append(expected_digit(per_digit))
            if self.reuse_cache:
                self.store.put(key, batch.row(r))
        return scores

    def release(self, key: str) -> None:
        self.store.drop(key)
