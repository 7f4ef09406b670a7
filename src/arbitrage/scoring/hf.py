"""In-process PRMs and routers on transformers models, with per-problem KV reuse across steps.

Each candidate to score is one row: the problem's cached prefix (question and accepted steps) plus the
candidate's segment. The output is read at the row's last token, which is the candidate's step-end token.
Scored rows are kept as cache entries, so when a candidate is accepted the next step starts from it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch

from ..backends.hf import load_model, load_tokenizer
from ..backends.kv import KVBatch, SlotStore, cache_kwargs
from ..errors import ModelLoadError
from ..formats import ROUTER_META, PRMFormat, RouterFormat, read_router_meta
from ..types import RouteRequest, ScoreRequest, Step


class _CachedScorer:
    """Runs rows of token ids with reuse of each problem's cached prefix; returns the last-token output."""

    def __init__(self, model, tokenizer, head: Callable, name: str, reuse_cache: bool = True, max_entries: int = 3):
        self.model, self.tokenizer, self.head, self.name = model, tokenizer, head, name
        self.reuse_cache = reuse_cache
        self.device = next(model.parameters()).device
        self.lane = ("torch", str(self.device))  # takes turns with the other in-process models on this device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad or 0)
        self.store = SlotStore(max_entries=max_entries)
        self._encode = lru_cache(maxsize=65536)(self._encode_uncached)  # per scorer: freed with it

    def encode(self, text: str, special: bool = False) -> tuple[int, ...]:
        return self._encode(text, special)

    def _encode_uncached(self, text: str, special: bool) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _forward(self, inputs, mask, positions, cache):
        return self.head(self.model, inputs, mask, positions, cache)

    @torch.no_grad()
    def run(self, rows: Sequence[tuple[str, list[int]]]) -> torch.Tensor:
        """Last-token outputs, one per (key, ids) row, as a float tensor [rows, C]."""
        if not rows:
            return torch.empty(0)
        pasts, news = [], []
        for key, ids in rows:
            entry, n = self.store.best(key, ids) if self.reuse_cache else (None, 0)
            pasts.append(entry.crop(n) if entry is not None and n > 0 else None)
            news.append(ids[n:])
        batch = KVBatch(self._forward, pasts, news, self.pad_id, self.device)
        out = batch.prefill()
        if self.reuse_cache:
            for r, (key, _) in enumerate(rows):
                self.store.put(key, batch.row(r))
        return out.float()

    def release(self, key: str) -> None:
        self.store.drop(key)


def _token_cls_head(model, inputs, mask, positions, cache):
    out = model(input_ids=inputs, attention_mask=mask, position_ids=positions, **cache_kwargs(model, cache))
    return out.logits[:, -1]


def _value_head(v_head: torch.nn.Linear):
    def head(model, inputs, mask, positions, cache):
        out = model(input_ids=inputs, attention_mask=mask, position_ids=positions, **cache_kwargs(model, cache))
        return v_head(out.last_hidden_state[:, -1].to(v_head.weight.dtype))

    return head


def _load_value_head(path: str, hidden: int, device, dtype) -> torch.nn.Linear:
    """Skywork-style `v_head.summary` weights, from the checkpoint's safetensors or .bin files."""
    from safetensors import safe_open

    weights = {}
    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        with safe_open(f, framework="pt") as sf:
            for k in sf.keys():
                if "v_head" in k:
                    weights[k.split("v_head.")[-1]] = sf.get_tensor(k)
    for f in sorted(glob.glob(os.path.join(path, "*.bin"))):
        if not weights:
            state = torch.load(f, map_location="cpu", weights_only=True)
            weights = {k.split("v_head.")[-1]: v for k, v in state.items() if "v_head" in k}
    if "summary.weight" not in weights:
        raise ModelLoadError(
            f"{path!r} has no value head (expected tensors 'v_head.summary.weight/bias' as in "
            f"Skywork-o1-Open-PRM); use --prm-kind token-cls for a token-classification PRM"
        )
    head = torch.nn.Linear(hidden, 1, bias="summary.bias" in weights)
    head.weight.data.copy_(weights["summary.weight"].reshape(1, hidden))
    if "summary.bias" in weights:
        head.bias.data.copy_(weights["summary.bias"].reshape(1))
    return head.to(device=device, dtype=dtype).eval()


def _local_dir(path_or_id: str) -> str:
    if os.path.isdir(os.path.expanduser(path_or_id)):
        return os.path.expanduser(path_or_id)
    from huggingface_hub import snapshot_download  # hub ids: fetch (or find in the local cache) the files

    return snapshot_download(path_or_id)


class HFPRM:
    """A process reward model: `value-head` (Skywork-o1-Open-PRM layout, sigmoid of the value at the step-end
    token) or `token-cls` (2-label token classification, softmax[1] at the step-end token)."""

    def __init__(self, scorer: _CachedScorer, fmt: PRMFormat, kind: str):
        self.scorer, self.fmt, self.kind = scorer, fmt, kind
        self.name = scorer.name
        self.lane = scorer.lane

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str,
        *,
        kind: str = "auto",
        fmt: str | PRMFormat = "skywork",
        device: str | None = "auto",
        dtype: str | None = "auto",
        reuse_cache: bool = True,
        name: str = "prm",
    ) -> HFPRM:
        tokenizer = load_tokenizer(path_or_id)
        if kind == "auto":
            kind = _detect_prm_kind(path_or_id)
        if kind == "value-head":
            model = load_model(path_or_id, "AutoModel", device=device, dtype=dtype)
            p = next(model.parameters())
            head = _value_head(_load_value_head(_local_dir(path_or_id), model.config.hidden_size, p.device, p.dtype))
        elif kind == "token-cls":
            model = load_model(path_or_id, "AutoModelForTokenClassification", device=device, dtype=dtype)
            head = _token_cls_head
        else:
            raise ModelLoadError(f"unknown PRM kind {kind!r}; use value-head, token-cls or auto")
        fmt = fmt if isinstance(fmt, PRMFormat) else PRMFormat.named(fmt)
        return cls(_CachedScorer(model, tokenizer, head, name, reuse_cache), fmt, kind)

    def row_ids(self, question: str, steps: Sequence[Step], candidate: Step) -> list[int]:
        return self.fmt.row_ids(self.scorer.encode, question, steps, candidate)

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        rows = [(r.key, self.row_ids(r.question, r.steps, c)) for r in requests for c in r.candidates]
        out = self.scorer.run(rows)
        probs = torch.sigmoid(out[:, 0]) if self.kind == "value-head" else torch.softmax(out, -1)[:, 1]
        flat: list[float] = probs.tolist()
        scores: list[list[float]] = []
        i = 0
        for r in requests:
            scores.append(flat[i : i + len(r.candidates)])
            i += len(r.candidates)
        return scores

    def release(self, key: str) -> None:
        self.scorer.release(key)


def _detect_prm_kind(path_or_id: str) -> str:
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(os.path.expanduser(path_or_id))
    except Exception as exc:
        raise ModelLoadError(f"cannot read the config of PRM {path_or_id!r}: {exc}") from exc
    archs = " ".join(getattr(cfg, "architectures", None) or [])
    return "token-cls" if "TokenClassification" in archs else "value-head"


class HFRouter:
    """A 2-label token-classification router over the annotated input of docs/method.md; y_hat = softmax[1].

    Loading checks that the directory is a router (its arbitrage_router.json says kind "classifier") and that its
    classification head was trained (not newly initialised by transformers), before any problem runs."""

    def __init__(self, scorer: _CachedScorer, fmt: RouterFormat | None = None, meta: dict | None = None):
        self.scorer, self.fmt = scorer, fmt or RouterFormat()
        self.name = scorer.name
        self.lane = scorer.lane
        meta = meta or {}
        self.head = meta.get("head", "softmax")
        self.n_classes = int(meta.get("n_classes", 2))
        self.positive = list(meta.get("positive_classes", [1]))
        self.edges = meta.get("edges")

    @property
    def separator(self) -> str:
        return self.fmt.separator

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str,
        *,
        device: str | None = "auto",
        dtype: str | None = "auto",
        reuse_cache: bool = True,
        name: str = "router",
    ) -> HFRouter:
        local = os.path.isdir(os.path.expanduser(path_or_id))
        meta = read_router_meta(path_or_id) if local else None
        if local and meta is None:
            what = (
                "a model directory"
                if os.path.isfile(os.path.join(os.path.expanduser(path_or_id), "config.json"))
                else "no model directory"
            )
            raise ModelLoadError(
                f"{path_or_id!r} is not a router: it has no {ROUTER_META} ({what}); a router is "
                f"the directory `arbitrage router train --out DIR` writes"
            )
        if meta is not None and meta.get("kind", "classifier") != "classifier":
            raise ModelLoadError(
                f"{path_or_id!r}: {ROUTER_META} says kind {meta.get('kind')!r}, which this "
                f"loader cannot read (a probe router needs its plugin, arbitrage.router_training)"
            )
        model, info = load_model(
            path_or_id, "AutoModelForTokenClassification", device=device, dtype=dtype, with_info=True
        )
        missing = [k for k in (info or {}).get("missing_keys", []) or []]
        if missing:
            raise ModelLoadError(
                f"{path_or_id!r} has no trained router head: transformers initialised "
                f"{', '.join(sorted(missing)[:4])} at random (the checkpoint is not a token "
                f"classifier trained by `arbitrage router train`)"
            )
        meta = meta or {}
        n_classes = int(meta.get("n_classes", 2))
        want = n_classes - 1 if meta.get("head") == "ordinal" else n_classes
        if getattr(model.config, "num_labels", 2) != want:
            raise ModelLoadError(
                f"{path_or_id!r}: its {ROUTER_META} describes {want} outputs, the model has {model.config.num_labels}"
            )
        tokenizer = load_tokenizer(path_or_id)
        return cls(
            _CachedScorer(model, tokenizer, _token_cls_head, name, reuse_cache), RouterFormat.from_meta(meta), meta
        )

    def row_ids(self, request: RouteRequest) -> list[int]:
        return self.fmt.row_ids(self.scorer.encode, request.question, request.steps, request.draft)

    def class_probs(self, requests: Sequence[RouteRequest]) -> torch.Tensor:
        out = self.scorer.run([(r.key, self.row_ids(r)) for r in requests])
        if self.head != "ordinal":
            return torch.softmax(out, -1)
        above = torch.sigmoid(out)  # P(class > j), j = 0..K-2; kept monotone before taking differences
        above = torch.cummin(above, dim=-1).values
        ones, zeros = torch.ones_like(above[:, :1]), torch.zeros_like(above[:, :1])
        cum = torch.cat([ones, above, zeros], dim=-1)
        return (cum[:, :-1] - cum[:, 1:]).clamp_min(0)

    def predict(self, requests: Sequence[RouteRequest]) -> list[float]:
        """y_hat = the probability mass of the classes whose mean advantage is above 0 (class 1 of 2)."""
        return self.class_probs(requests)[:, self.positive].sum(-1).tolist()

    def classify(self, requests: Sequence[RouteRequest]) -> list[int]:
        return self.class_probs(requests).argmax(-1).tolist()

    def release(self, key: str) -> None:
        self.scorer.release(key)
