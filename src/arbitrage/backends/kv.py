"""Per-problem KV caches and how to run many of them through one batched forward pass.

Each problem keeps its own cache (a list of per-layer key/value tensors of batch size 1) and the token ids
whose keys/values it holds. For a batched call the caches are stacked into one left-padded batch cache, the
new tokens of each row are right-aligned after it, and an attention mask hides the padding; afterwards each
row's own positions are gathered back out. Positions are passed explicitly, so padding never shifts them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

Layers = list[tuple[torch.Tensor, torch.Tensor]]


def cache_layers(cache) -> Layers:
    """Key/value tensors of a DynamicCache (transformers 5.x `layers`, 4.5x `key_cache`/`value_cache`)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def cache_kwargs(model, cache, last_logits_only: bool = False) -> dict:
    """The keyword arguments that hand `cache` to a transformers model's forward: `cache` since transformers
    5.24, `past_key_values` before (which 5.24 still takes, with a FutureWarning); and, for a causal LM head,
    `logits_to_keep=1` when only the last position's logits are read (the head then skips the prefill rows)."""
    params = _forward_params(type(model))
    kw = {"cache" if "cache" in params else "past_key_values": cache, "use_cache": True}
    if last_logits_only and "logits_to_keep" in params:
        kw["logits_to_keep"] = 1
    return kw


_PARAMS: dict[type, frozenset[str]] = {}


def _forward_params(cls) -> frozenset[str]:
    if cls not in _PARAMS:
        _PARAMS[cls] = frozenset(inspect.signature(cls.forward).parameters)
    return _PARAMS[cls]


def make_cache(layers: Layers | None) -> DynamicCache:
    cache = DynamicCache()
    for i, (k, v) in enumerate(layers or []):
        cache.update(k, v, i)
    return cache


@dataclass
class CacheEntry:
    """Keys/values of `ids` (exactly those tokens) for one problem and one model."""

    ids: list[int]
    layers: Layers

    def crop(self, n: int) -> CacheEntry:
        return CacheEntry(self.ids[:n], [(k[:, :, :n], v[:, :, :n]) for k, v in self.layers])


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class SlotStore:
    """Cache entries per problem key; a key may hold a few alternatives (e.g. a PRM scoring two candidates)."""

    max_entries: int = 2
    entries: dict[str, list[CacheEntry]] = field(default_factory=dict)

    def best(self, key: str, ids: Sequence[int]) -> tuple[CacheEntry | None, int]:
        """The entry sharing the longest prefix with `ids`, and how many tokens of it can be reused.
        At least one token is always left to compute, since its output is what the caller wants."""
        best, best_n = None, 0
        for entry in self.entries.get(key, []):
            n = min(common_prefix(entry.ids, ids), len(ids) - 1)
            if n > best_n:
                best, best_n = entry, n
        return best, best_n

    def put(self, key: str, entry: CacheEntry) -> None:
        lst = [e for e in self.entries.get(key, []) if e.ids != entry.ids]
        lst.insert(0, entry)
        self.entries[key] = lst[: self.max_entries]

    def drop(self, key: str) -> None:
        self.entries.pop(key, None)

    def __len__(self) -> int:
        return len(self.entries)


class KVBatch:
    """A batch of rows sharing one DynamicCache, grown token by token (prefill, then decode)."""

    def __init__(
        self,
        forward: Callable,
        rows_past: Sequence[CacheEntry | None],
        rows_new: Sequence[Sequence[int]],
        pad_id: int,
        device: torch.device,
    ):
        self.forward = forward
        self.device = device
        bsz = len(rows_new)
        past_lens = [len(p.ids) if p is not None else 0 for p in rows_past]
        P, N = max(past_lens), max(len(r) for r in rows_new)
        self.cache = DynamicCache()
        template = next((p for p in rows_past if p is not None and p.ids), None)
        if P > 0 and template is not None:
            for li, (k0, v0) in enumerate(template.layers):
                K = k0.new_zeros((bsz, k0.shape[1], P, k0.shape[3]))
                V = v0.new_zeros((bsz, v0.shape[1], P, v0.shape[3]))
                for i, past in enumerate(rows_past):
                    if past is not None and past_lens[i]:
                        k, v = past.layers[li]
                        K[i, :, P - past_lens[i] :] = k[0]
                        V[i, :, P - past_lens[i] :] = v[0]
                self.cache.update(K, V, li)
        mask = torch.zeros((bsz, P + N), dtype=torch.long)
        inputs = torch.full((bsz, N), pad_id, dtype=torch.long)
        positions = torch.zeros((bsz, N), dtype=torch.long)
        for i, new in enumerate(rows_new):
            mask[i, P - past_lens[i] : P] = 1
            mask[i, P + N - len(new) :] = 1
            inputs[i, N - len(new) :] = torch.tensor(list(new), dtype=torch.long)
            positions[i, N - len(new) :] = torch.arange(past_lens[i], past_lens[i] + len(new))
        self.mask = mask.to(device)
        self.next_pos = torch.tensor([p + len(n) for p, n in zip(past_lens, rows_new)], device=device)
        self.ids = [list(p.ids) if p is not None else [] for p in rows_past]
        for i, new in enumerate(rows_new):
            self.ids[i] += list(new)
        self._prefill = (inputs.to(device), positions.to(device))
        self.new_lens = [len(n) for n in rows_new]

    def prefill(self, **kw):
        inputs, positions = self._prefill
        return self.forward(inputs, self.mask, positions, self.cache, **kw)

    def decode(self, tokens: torch.Tensor, **kw):
        """Feed one token per row (a [B] tensor)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        out = self.forward(tokens[:, None], self.mask, self.next_pos[:, None], self.cache, **kw)
        self.next_pos = self.next_pos + 1
        for i, t in enumerate(tokens.tolist()):
            self.ids[i].append(t)
        return out

    def extend(self, rows_new: Sequence[Sequence[int]], **kw):
        """Feed a different number of tokens to each row in one forward pass (right-aligned, padding masked out):
        speculative decoding feeds each row its pending token and the draft's proposals."""
        bsz = len(rows_new)
        width = max(len(r) for r in rows_new)
        inputs = torch.zeros((bsz, width), dtype=torch.long)
        chunk_mask = torch.zeros((bsz, width), dtype=torch.long)
        positions = torch.zeros((bsz, width), dtype=torch.long)
        next_pos = self.next_pos.tolist()
        for i, new in enumerate(rows_new):
            n = len(new)
            if n:
                inputs[i, width - n :] = torch.tensor(list(new), dtype=torch.long)
                chunk_mask[i, width - n :] = 1
                positions[i, width - n :] = torch.arange(next_pos[i], next_pos[i] + n)
            self.ids[i] += list(new)
        self.mask = torch.cat([self.mask, chunk_mask.to(self.device)], dim=1)
        out = self.forward(inputs.to(self.device), self.mask, positions.to(self.device), self.cache, **kw)
        self.next_pos = self.next_pos + torch.tensor([len(r) for r in rows_new], device=self.device)
        return out

    def retract(self, i: int, n: int) -> None:
        """Forget row i's last `n` tokens (rejected speculation): their keys/values stay in the cache but are
        masked out from now on, and the row's next token takes the first freed position."""
        if n <= 0:
            return
        live = self.mask[i].nonzero().squeeze(1)
        self.mask[i, live[-n:]] = 0
        self.next_pos[i] -= n
        del self.ids[i][-n:]

    def row(self, i: int) -> CacheEntry:
        """Row i's own keys/values (padding removed) and the ids they belong to."""
        idx = self.mask[i].nonzero().squeeze(1)
        layers = [(k[i : i + 1, :, idx], v[i : i + 1, :, idx]) for k, v in cache_layers(self.cache)]
        return CacheEntry(list(self.ids[i]), layers)

    def select(self, keep: Sequence[int]) -> None:
        """Keep only these rows (finished rows leave the batch so they cost nothing more)."""
        index = torch.tensor(list(keep), device=self.device)
        layers = [(k.index_select(0, index), v.index_select(0, index)) for k, v in cache_layers(self.cache)]
        self.cache = make_cache(layers)
        self.mask = self.mask.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)
        self.ids = [self.ids[i] for i in keep]
        self.new_lens = [self.new_lens[i] for i in keep]
