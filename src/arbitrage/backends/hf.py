"""In-process transformers backend: loading models and writing steps with per-problem KV reuse.

A problem's cache survives between its steps; a step written by the other model is appended by prefilling
only its new tokens (the common prefix with the cached ids is reused, the rest is computed). Many problems
that wait on the same model go through one batched forward pass (see `kv.KVBatch`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

import torch

from ..errors import ModelLoadError
from ..types import DEFAULT_SEPARATOR, Generation, GenerationRequest, JudgeRequest, Step, context_ids
from .decoding import Call, Decoding
from .hub import _load_failure, check_model_source, hub_options, hub_reachable, load_tokenizer  # noqa: F401
from .kv import KVBatch, SlotStore, cache_kwargs


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def load_model(
    path_or_id: str,
    auto_class: str = "AutoModelForCausalLM",
    device: str | None = "auto",
    dtype: str | None = "auto",
    with_info: bool = False,
    **kwargs,
):
    """A model in eval mode on `device`; with `with_info`, also transformers' loading report (missing keys...)."""
    import transformers

    check_model_source(path_or_id)
    dev = resolve_device(device)
    cls = getattr(transformers, auto_class)
    # transformers >= 4.56 calls it `dtype`, older releases `torch_dtype`.
    dtype_kw = "dtype" if tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56) else "torch_dtype"
    kwargs[dtype_kw] = resolve_dtype(dtype, dev)
    kwargs.update(hub_options(path_or_id))
    try:
        out = cls.from_pretrained(os.path.expanduser(path_or_id), output_loading_info=with_info, **kwargs)
    except Exception as exc:
        raise _load_failure(auto_class, path_or_id, exc) from exc
    model, info = out if with_info else (out, None)
    model = model.to(dev).eval()
    return (model, info) if with_info else model


def _params(model) -> frozenset[str]:
    from .kv import _forward_params

    return _forward_params(type(model))


def _vocab_signature(tokenizer) -> str:
    """Equal for two tokenizers that map the same text to the same ids (a draft's token ids can then be verified
    by the target as they are)."""
    import hashlib

    if not hasattr(tokenizer, "get_vocab"):  # a tokenizer of one's own (the GPU benchmark's): only itself is known
        return f"object-{id(tokenizer):x}"  # to map alike
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr(vocab).encode()).hexdigest()[:16]


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(src, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return ids


class HFGenerator:
    """Writes one step per request with a transformers causal LM (draft or target).

    Runs on the lane ("torch", device): in-process models on one device take turns (engine.py). `cancel(key)`
    drops a problem's row from a decode in progress (its result comes back empty)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str = "model",
        separator: str = DEFAULT_SEPARATOR,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        reuse_cache: bool = True,
        return_hidden: bool = False,
        static_slots: int = 0,
        static_len: int = 4096,
        compile: bool = True,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.name, self.separator = name, separator
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.reuse_cache, self.return_hidden = reuse_cache, return_hidden
        self.device = next(model.parameters()).device
        self.lane = ("torch", str(self.device))
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(self.eos_ids), 0))
        self.store = SlotStore(max_entries=1)
        self._cancelled: set[str] = set()
        # Escalations that reuse the draft's work (speculative.py): a draft of the same vocabulary attached to a
        # target proposes tokens inside the target's steps when a request asks for it (GenerationRequest.gamma).
        self.speculator: HFGenerator | None = None
        self.vocab_signature = _vocab_signature(tokenizer)
        self._encode_cached = lru_cache(maxsize=65536)(self._encode_uncached)
        # The fast path (static_kv.py): a pre-allocated cache with `static_slots` problem slots, one compiled step.
        self.static = None
        if static_slots:
            if return_hidden:
                raise ModelLoadError(
                    "the static-cache fast path does not return hidden states (probe routers "
                    "that read them need the plain path)"
                )
            from .static_kv import StaticDecoder

            self.static = StaticDecoder(model, static_slots, static_len, compile=compile)

    @classmethod
    def from_pretrained(cls, path_or_id: str, *, device: str | None = "auto", dtype: str | None = "auto", **kw):
        tokenizer = load_tokenizer(path_or_id)
        model = load_model(path_or_id, "AutoModelForCausalLM", device=device, dtype=dtype)
        return cls(model, tokenizer, **kw)

    # --- token ids of a context -------------------------------------------------------------------------
    def _encode_uncached(self, text: str, special: bool) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def encode(self, text: str, special: bool = False) -> tuple[int, ...]:
        return self._encode_cached(text, special)

    def context_ids(self, prompt: str, steps: Sequence[Step]) -> list[int]:
        """The prompt's ids, then each step's: the author's own ids when this model wrote it, else re-tokenized."""
        return context_ids(self.encode, self.name, self.separator, prompt, steps)

    # --- generation -------------------------------------------------------------------------------------
    def _forward_keep(self, inputs, mask, positions, cache, keep: int = 1):
        """The logits of each row's last `keep` positions ([rows, keep, vocab], float)."""
        kw = cache_kwargs(self.model, cache)
        out = self.model(
            input_ids=inputs,
            attention_mask=mask,
            position_ids=positions,
            **({**kw, "logits_to_keep": keep} if "logits_to_keep" in _params(self.model) else kw),
        )
        return out.logits[:, -keep:].float()

    def _forward(self, inputs, mask, positions, cache):
        out = self.model(
            input_ids=inputs,
            attention_mask=mask,
            position_ids=positions,
            output_hidden_states=self.return_hidden,
            **cache_kwargs(self.model, cache, True),
        )
        logits = out.logits[:, -1].float()
        hidden = out.hidden_states[-1][:, -1].float() if self.return_hidden else None
        return logits, hidden

    @staticmethod
    def _pick(
        logits: torch.Tensor, temps: list[float], top_ps: list[float], gens: list[torch.Generator | None]
    ) -> tuple[torch.Tensor, list]:
        """Greedy for rows at temperature 0, else a sample (top-p), each row with its own settings and seed; also
        the distribution each sampled row was drawn from (None for greedy rows)."""
        from .speculative import sampling_probs

        greedy = logits.argmax(-1)
        if not any(t > 0 for t in temps):
            return greedy, [None] * len(temps)
        picks: list[torch.Tensor] = []
        dists: list[torch.Tensor | None] = []
        for r, (t, p, g) in enumerate(zip(temps, top_ps, gens)):
            if t <= 0:
                picks.append(greedy[r])
                dists.append(None)
                continue
            weights = sampling_probs(logits[r], t, p, normalize=False)
            picks.append(torch.multinomial(weights, 1, generator=g)[0])
            dists.append(weights / weights.sum())
        return torch.stack(picks), dists

    def cancel(self, key: str) -> None:
        self._cancelled.add(key)

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if self.static is not None:
            from .static_kv import generate_static

            return generate_static(self, requests)
        if any(r.speculation is not None or (r.gamma and self.speculator is not None) for r in requests):
            from . import speculative

            return speculative.generate(self, requests)
        call = Call(self, requests)
        if not call.active:
            return call.generations()
        pasts, news = [], []
        for i in call.active:
            ids = call.full[i]
            entry, n = self.store.best(requests[i].key, ids) if self.reuse_cache else (None, 0)
            pasts.append(entry.crop(n) if entry is not None and n > 0 else None)
            news.append(ids[n:])
        batch = KVBatch(self._forward, pasts, news, self.pad_id, self.device)
        logits, hidden = batch.prefill()
        dec = Decoding(call, {i: len(news[j]) for j, i in enumerate(call.active)})

        def keep_cache(r: int, i: int) -> None:  # the finished row's keys/values, for its problem's next step
            if self.reuse_cache:
                self.store.put(requests[i].key, batch.row(r))

        while True:
            n_rows = len(dec.rows)
            keep = dec.advance(logits, hidden, keep_cache)
            if not keep:
                break
            if len(keep) < n_rows:
                batch.select(keep)
            logits, hidden = batch.decode(torch.tensor(dec.last_tokens(), device=self.device))
        return call.generations()

    def _finish(
        self, ids: list[int], logps: list[float], ents: list[float], last: int, limit: int, hidden: torch.Tensor | None
    ) -> Generation | None:
        """A Generation if this row's step is complete after token `last`, else None. Called at every token: it
        copies nothing (and reads no hidden state off the device) until the step is complete."""

        def extras() -> dict:
            out: dict = {"generator": self.name, "entropies": list(ents)}
            if hidden is not None:
                out["last_hidden"] = hidden.tolist()
            return out

        if last in self.eos_ids:
            body = ids[:-1]
            text = self.tokenizer.decode(body, skip_special_tokens=False)
            if self.separator not in text:
                return Generation(text=text, stop="eos", token_ids=body, logprobs=list(logps), extras=extras())
        # The separator can first appear only around the newest token: look at a short tail of the step
        # before decoding all of it (decoding the whole step at every token is quadratic in its length).
        tail = self.tokenizer.decode(ids[-(2 * len(self.separator) + 4) :], skip_special_tokens=False)
        if self.separator not in tail and len(ids) < limit:
            return None
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        cut = text.find(self.separator)
        if cut >= 0:
            step_text = text[:cut]
            own = (
                ids if text == step_text + self.separator else list(self.encode(step_text + self.separator, False))
            )  # the last token ran past the separator
            return Generation(text=step_text, stop="separator", token_ids=own, logprobs=list(logps), extras=extras())
        if len(ids) >= limit:
            return Generation(text=text, stop="length", token_ids=list(ids), logprobs=list(logps), extras=extras())
        return None

    # --- judging (StepJudge: the SpecReason-style baseline, arbitrage/target_judge.py) ---------------------
    @torch.no_grad()
    def judge(self, requests: Sequence[JudgeRequest]) -> list[float]:
        """A 0-9 score per JudgeRequest: one forward pass over context + draft step + question (only the tokens
        past this problem's cached prefix are computed), read as the expected digit of the next token. The
        judged row is cached like a step, so a following generation or judgement reuses its prefix."""
        from ..target_judge import digit_token_ids, expected_digit

        if not requests:
            return []
        if getattr(self, "_digit_ids", None) is None:
            self._digit_ids = digit_token_ids(self.tokenizer)
        pasts, news, rows = [], [], []
        for req in requests:
            ids = self.context_ids(req.prompt, [*req.steps, req.draft]) + list(self.encode(req.question, False))
            entry, n = self.store.best(req.key, ids) if self.reuse_cache else (None, 0)
            pasts.append(entry.crop(n) if entry is not None and n > 0 else None)
            news.append(ids[n:])
            rows.append(req.key)
        batch = KVBatch(self._forward, pasts, news, self.pad_id, self.device)
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
        self._cancelled.discard(key)
        if self.static is not None:
            self.static.free(key)
