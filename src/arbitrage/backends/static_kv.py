"""The fast decoding path of the in-process backend: a pre-allocated (static) KV cache with one slot per problem,
and one decoding step compiled once (torch.compile; CUDA graphs on a GPU) for the whole slot pool.

- `SlotCache` holds, per layer, keys and values of shape [slots, kv_heads, max_len, head_dim]. A problem owns a
  slot from its first call to its release: its keys/values stay in place between its steps (nothing is copied),
  and a step written by the other model is prefilled with only its new tokens, written at their positions.
- Prefill runs eagerly on the rows that have new tokens (right-padded; padding writes land beyond each row's
  valid length, where the mask never looks and the next real tokens overwrite them).
- Decode always runs every slot at once, shape [slots, 1]: rows not in the call take a dummy token whose write
  lands at their next free position, again never read before it is overwritten. With fixed shapes the step is
  compiled once per model (`torch.compile(dynamic=False)`; mode "reduce-overhead" on CUDA captures a CUDA graph),
  not per step or per problem.
- Attention reads the whole [max_len] row through an additive mask (0 where a position holds this row's token
  at or before the query's position, a large negative number elsewhere), so the math equals the plain path's up
  to floating-point order.

The cache object answers the few calls transformers' attention makes (`update`), for 5.x (`cache=`) and 4.5x
(`past_key_values=`) alike; the 4D mask makes the model skip its own mask construction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .kv import common_prefix


class SlotCache:
    """Static keys/values for `slots` problems; `rows`/`positions` say where the current forward writes."""

    is_compileable = True

    def __init__(self, config, slots: int, max_len: int, device, dtype):
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (slots, heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.slots, self.max_len = slots, max_len
        self.rows: torch.Tensor | None = None  # [B] slot of each batch row (None: every slot, in order)
        self.positions: torch.Tensor | None = None  # [B, T] absolute position of each new token

    def bind(self, rows: torch.Tensor | None, positions: torch.Tensor) -> None:
        self.rows, self.positions = rows, positions

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Write the new keys/values [B, H, T, D] at (row, position) and return the rows' whole caches."""
        k, v = self.keys[layer_idx], self.values[layer_idx]
        pos = self.positions
        if self.rows is None:  # decode: every slot, one token each
            b = torch.arange(k.shape[0], device=k.device)[:, None]
            k[b, :, pos] = key_states.permute(0, 2, 1, 3)
            v[b, :, pos] = value_states.permute(0, 2, 1, 3)
            return k, v
        r = self.rows[:, None]
        k[r, :, pos] = key_states.permute(0, 2, 1, 3)
        v[r, :, pos] = value_states.permute(0, 2, 1, 3)
        return k[self.rows], v[self.rows]

    # what transformers may ask of a cache
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def get_max_cache_shape(self, *args) -> int:
        return self.max_len

    def __len__(self) -> int:
        return len(self.keys)


def additive_mask(query_positions: torch.Tensor, max_len: int, dtype) -> torch.Tensor:
    """[B, 1, T, max_len]: 0 where key position <= the query's position, a large negative number elsewhere
    (each row holds only its own tokens, at positions 0..its length-1)."""
    keys = torch.arange(max_len, device=query_positions.device)
    allowed = keys[None, None, None, :] <= query_positions[:, None, :, None]
    neg = torch.finfo(dtype).min / 2
    return torch.where(
        allowed, torch.zeros((), dtype=dtype, device=keys.device), torch.full((), neg, dtype=dtype, device=keys.device)
    )


class StaticDecoder:
    """Prefill and compiled decode of one causal LM over a SlotCache (see the module docstring)."""

    def __init__(self, model, slots: int, max_len: int, compile: bool = True):
        from .kv import cache_kwargs

        p = next(model.parameters())
        self.model, self.device, self.dtype = model, p.device, p.dtype
        self.cache = SlotCache(model.config, slots, max_len, p.device, p.dtype)
        self.kw = cache_kwargs(model, self.cache, last_logits_only=False)
        self.compile = compile
        self._decode: Callable[..., torch.Tensor] | None = None  # the (compiled) one-token step, built on first use
        self.compiled_calls = 0  # how many decode steps went through the compiled function
        self.timed = False  # measure the time inside forward passes (synchronising the device; benchmarks)
        self.seconds, self.calls = 0.0, 0
        self.slot_of: dict[str, int] = {}  # problem key -> its slot
        self.slot_ids: list[list[int]] = [[] for _ in range(slots)]  # the ids whose keys/values each slot holds

    def slot(self, key: str, name: str = "model") -> int:
        """The slot of a problem (a free one on its first call)."""
        if key not in self.slot_of:
            free = sorted(set(range(self.cache.slots)) - set(self.slot_of.values()))
            if not free:
                raise RuntimeError(
                    f"{name}: all {self.cache.slots} static-cache slots are taken; give at least as "
                    f"many slots as problems in flight"
                )
            self.slot_of[key] = free[0]
            self.slot_ids[free[0]] = []
        return self.slot_of[key]

    def free(self, key: str) -> None:
        if key in self.slot_of:
            self.slot_ids[self.slot_of.pop(key)] = []

    def _timed(self, fn, *args):
        if not self.timed:
            return fn(*args)
        import time

        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out

    def forward(self, ids, positions, mask):
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **self.kw)
        return out.logits

    def prefill(self, rows: list[int], news: list[list[int]], starts: list[int], pad_id: int) -> torch.Tensor:
        """Write each row's new tokens at starts[i].. and return the logits at each row's last new token [B, V]."""
        n = max(len(x) for x in news)
        if max(s + n for s in starts) > self.cache.max_len:
            raise RuntimeError(
                f"a context longer than the static cache ({self.cache.max_len} tokens); raise "
                f"max_len (--static-cache-len)"
            )
        ids = torch.full((len(rows), n), pad_id, dtype=torch.long, device=self.device)
        for i, x in enumerate(news):
            ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        positions = torch.tensor(starts, device=self.device)[:, None] + torch.arange(n, device=self.device)[None, :]
        self.cache.bind(torch.tensor(rows, device=self.device), positions)
        logits = self._timed(self.forward, ids, positions, additive_mask(positions, self.cache.max_len, self.dtype))
        last = torch.tensor([len(x) - 1 for x in news], device=self.device)
        return logits[torch.arange(len(rows), device=self.device), last].float()

    def _step(self, tokens, positions):
        self.cache.bind(None, positions)
        return self.forward(tokens, positions, additive_mask(positions, self.cache.max_len, self.dtype))[:, -1]

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One token for every slot ([slots] tokens at [slots] positions) -> logits [slots, V]."""
        if self._decode is None:
            if self.compile:
                mode = "reduce-overhead" if self.device.type == "cuda" else None
                self._decode = torch.compile(self._step, dynamic=False, mode=mode)
            else:
                self._decode = self._step
        self.compiled_calls += self.compile
        return self._timed(self._decode, tokens[:, None], positions[:, None]).float()


def generate_static(self, requests) -> list:
    """HFGenerator.generate on the fast path (`self` is the generator): prefill each request's new tokens into
    its problem's slot, then decode every slot at once with the compiled step until each request's step ends."""
    from .decoding import Call, Decoding

    call = Call(self, requests)
    if not call.active:
        return call.results
    slots, news, starts = [], [], []
    for i in call.active:
        ids = call.full[i]
        slot = self.static.slot(requests[i].key, self.name)
        n = min(common_prefix(self.static.slot_ids[slot], ids), len(ids) - 1) if self.reuse_cache else 0
        slots.append(slot)
        news.append(ids[n:])
        starts.append(n)
        self.static.slot_ids[slot] = list(ids)
    logits = self.static.prefill(slots, news, starts, self.pad_id)
    dec = Decoding(call, {i: len(news[j]) for j, i in enumerate(call.active)})
    slot_of_row = dict(zip(call.active, slots))
    S = self.static.cache.slots
    while dec.advance(logits, None):
        pos_all = torch.tensor(
            [min(len(ids), self.static.cache.max_len - 1) for ids in self.static.slot_ids], device=self.device
        )
        toks = [self.pad_id] * S
        for i, t in zip(dec.rows, dec.last_tokens()):  # each continuing row's sampled token goes into its slot
            toks[slot_of_row[i]] = t
            self.static.slot_ids[slot_of_row[i]].append(t)
        logits_all = self.static.decode(torch.tensor(toks, device=self.device), pos_all)  # one copy to the device
        logits = logits_all[torch.tensor([slot_of_row[i] for i in dec.rows], device=self.device)]
    return call.results
