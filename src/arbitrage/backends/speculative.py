"""Escalations that reuse the draft's work, in-process (docs/method.md, "Verifying an escalated step").

When the target writes a step the draft already proposed (`GenerationRequest.speculation`), one forward pass over
the proposal (only its tokens are new to the target's cache) tells how much of it the target would have written
itself: greedy keeps the longest prefix equal to the target's argmax, sampling accepts each draft token x with
probability min(1, p(x) / q(x)) and resamples from norm(max(0, p - q)) at the first rejection (Leviathan et al.
2023; Chen et al. 2023), so the step is exactly the target's (token for token when greedy, in distribution when
sampling). From the first disagreement on, a draft model attached to the target (`HFGenerator.speculator`, same
vocabulary) proposes `gamma` tokens at a time and the target checks them in one pass: token-level speculative
decoding inside the target's own step, for a whole batch whose rows accept different numbers of tokens (each
row's rejected tokens are masked out of both models' caches, `KVBatch.retract`).

Per step, `Generation.extras["speculation"]` counts what happened: draft tokens proposed and kept by the target,
the target's forward passes, and the tokens the target wrote itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..types import Generation, GenerationRequest, Sampling, request_seed
from .decoding import Call
from .kv import CacheEntry, KVBatch

if TYPE_CHECKING:
    from .hf import HFGenerator


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float, normalize: bool = True) -> torch.Tensor:
    """The distribution a row samples from: softmax(logits / t), cut to the top-p nucleus (and renormalised,
    unless `normalize` is False: `torch.multinomial` takes the weights as they are, which is how the plain
    decoding path has always drawn)."""
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        sorted_p[sorted_p.cumsum(-1) - sorted_p > top_p] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        if normalize:
            probs = probs / probs.sum(-1, keepdim=True)
    return probs


def verify_greedy(logits: torch.Tensor, proposal: Sequence[int]) -> tuple[int, int]:
    """(tokens of `proposal` kept, the target's next token). `logits[j]` is the target's output before
    proposal[j]; `logits[len(proposal)]` the one after it (the bonus position)."""
    picks = logits.argmax(-1).tolist()
    k = 0
    while k < len(proposal) and picks[k] == proposal[k]:
        k += 1
    return k, picks[k]


def verify_sampled(
    p: torch.Tensor, q: torch.Tensor, proposal: Sequence[int], gen: torch.Generator | None
) -> tuple[int, int]:
    """Speculative sampling. `p[j]`: the target's sampling distribution before proposal[j] (`p[n]` after the
    last); `q[j]`: the draft's, from which proposal[j] was drawn. Returns (tokens kept, next token): the next
    token comes from norm(max(0, p - q)) at the first rejection, else from p[n]."""
    n = len(proposal)
    if n:
        x = torch.tensor(list(proposal), device=p.device)
        rows = torch.arange(n, device=p.device)
        ratio = (p[rows, x] / q[rows, x].clamp_min(1e-30)).clamp(max=1.0)
        u = torch.rand(n, generator=gen, device=p.device)
        rejected = (u >= ratio).nonzero()
        if len(rejected):
            k = int(rejected[0])
            residual = (p[k] - q[k]).clamp_min(0)
            total = residual.sum()
            if total <= 0:  # p == q at this position: p itself (the rejection had probability 0)
                residual, total = p[k], p[k].sum()
            return k, int(torch.multinomial(residual / total, 1, generator=gen))
    return n, int(torch.multinomial(p[n], 1, generator=gen))


@dataclass
class _Row:
    """One request being written: its state in the target's (and the draft's) batch."""

    index: int
    req: GenerationRequest
    temperature: float
    top_p: float
    gen: torch.Generator | None
    limit: int
    out_ids: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    ents: list[float] = field(default_factory=list)
    gamma: int = 0  # draft tokens proposed per round inside the step (0: the target alone)
    pending: int | None = None  # committed, not yet in the target's cache
    draft_pending: list[int] = field(default_factory=list)  # committed, not yet in the draft's cache
    ctx_prefill: int = 0  # context tokens the target computed (not found in its cache) before verifying
    stats: dict = field(
        default_factory=lambda: {
            "proposed": 0,
            "kept": 0,
            "target_forwards": 0,
            "draft_speculated": 0,
            "draft_accepted": 0,
            "target_written": 0,
        }
    )

    @property
    def sampled(self) -> bool:
        return self.temperature > 0


def proposal_ids(target: HFGenerator, req: GenerationRequest) -> tuple[list[int], torch.Tensor | None] | None:
    """The draft proposal of `req` as the target's token ids (and the draft's sampling distributions, when it
    sampled), or None when it cannot be verified losslessly: a sampled request whose draft kept no
    distributions (a served draft), or a draft of another vocabulary."""
    step = req.speculation
    if step is None:
        return None
    own_ids = step.extras.get("spec_ids")
    # the draft's own ids, when they are ids of the target's vocabulary
    same_vocab_ids = own_ids if own_ids is not None and step.extras.get("vocab") == target.vocab_signature else None
    t, _, _ = (req.sampling or Sampling()).over(target.temperature, target.top_p, target.seed)
    if t > 0:
        dists = step.extras.get("dists")
        if same_vocab_ids is None or dists is None or len(dists) != len(same_vocab_ids):
            return None
        return list(same_vocab_ids), dists.to(target.device)
    if same_vocab_ids is not None:
        return list(same_vocab_ids), None
    ids = list(target.encode(step.context_text(target.separator), False))
    if step.stop == "eos":
        ids.append(min(target.eos_ids))
    return ids, None


def generate(target: HFGenerator, requests: Sequence[GenerationRequest]) -> list[Generation]:
    """Write each request's step with the target, verifying its draft proposal first and then speculating with
    the attached draft (when there is one), batched over the requests."""
    call = Call(target, requests)
    if not call.active:
        return call.generations()
    rows, pasts, news, proposals = [], [], [], []
    for i in call.active:
        req = requests[i]
        t, top_p, seed = (req.sampling or Sampling()).over(target.temperature, target.top_p, target.seed)
        g = None
        if t > 0:  # a stream of its own: the draft drew its proposal from request_seed(..., seed_source, ...), and
            # acceptance draws correlated with the draft's would bias the step away from the target's distribution
            g = torch.Generator(device=target.device)
            g.manual_seed(request_seed(seed, req.seed_source + "/speculative", req.step_index, req.sample))
        rows.append(
            _Row(i, req, t, top_p, g, req.max_new_tokens, gamma=req.gamma if target.speculator is not None else 0)
        )
        ctx = call.full[i]
        entry, n = target.store.best(req.key, ctx) if target.reuse_cache else (None, 0)
        prop = proposal_ids(target, req)
        proposals.append(prop)
        pasts.append(entry.crop(n) if entry is not None and n > 0 else None)
        rows[-1].ctx_prefill = len(ctx) - (n if entry is not None and n > 0 else 0)
        news.append(ctx[n:] + (prop[0][: req.max_new_tokens] if prop else []))
    batch = KVBatch(target._forward_keep, pasts, news, target.pad_id, target.device)
    keep = max(len(p[0][: r.limit]) if p else 0 for p, r in zip(proposals, rows)) + 1
    logits = batch.prefill(keep=keep)
    done: set[int] = set()
    for r, (row, prop) in enumerate(zip(rows, proposals)):
        row.stats["target_forwards"] += 1
        ids = prop[0][: row.limit] if prop else []
        out = logits[r, keep - len(ids) - 1 :]
        dists = prop[1][: len(ids)] if prop and prop[1] is not None else None
        kept, nxt = _verify(row, out, ids, dists)
        row.stats["proposed"] += len(ids)
        if _commit(
            target, row, out, ids[:kept] + [nxt], kept=kept, lead=0, n_fed=len(ids), batch=batch, r=r, call=call
        ):
            done.add(r)
        row.stats["kept"] += min(kept, len(row.out_ids))
    draft = target.speculator if any(row.gamma > 0 for row in rows) else None
    dbatch = None
    while True:
        live = [r for r in range(len(rows)) if r not in done and rows[r].req.key not in target._cancelled]
        for r in range(len(rows)):
            if r not in done and rows[r].req.key in target._cancelled:
                call.results[rows[r].index] = Generation(
                    text="",
                    stop="length",
                    token_ids=[],
                    logprobs=[],
                    extras={"generator": target.name, "cancelled": True},
                )
                done.add(r)
        if not live:
            break
        if draft is not None:
            if dbatch is None:
                dbatch = _draft_batch(draft, rows, done)
            _speculate_round(target, draft, rows, live, batch, dbatch, call, done)
        else:
            _decode_round(target, rows, live, batch, call, done)
    if draft is not None and dbatch is not None and draft.reuse_cache:
        for r, row in enumerate(rows):  # the draft keeps what it computed of this step, for its next step
            if row.gamma > 0 and len(dbatch.ids[r]) > 1:
                draft.store.put(row.req.key, dbatch.row(r))
    for row in rows:
        result = call.results[row.index]
        if result is not None and not result.extras.get("cancelled"):
            st = row.stats
            st["target_written"] = len(row.out_ids) - st["kept"] - st["draft_accepted"]
            result.extras["speculation"] = dict(st)
    return call.generations()


def _verify(row: _Row, out: torch.Tensor, ids: list[int], dists: torch.Tensor | None) -> tuple[int, int]:
    if not row.sampled:
        return verify_greedy(out, ids)
    p = sampling_probs(out, row.temperature, row.top_p)
    q = dists if dists is not None else torch.zeros_like(p[: len(ids)])
    return verify_sampled(p, q, ids, row.gen)


def _commit(
    target: HFGenerator,
    row: _Row,
    logits: torch.Tensor,
    tokens: list[int],
    kept: int,
    lead: int,
    n_fed: int,
    batch: KVBatch,
    r: int,
    call: Call,
) -> bool:
    """Append `tokens` (logits[j] produced tokens[j]) to the row's step, stopping where the step ends. Of the
    `n_fed` tokens just fed to the target, the first `lead` were committed before and the next `kept` are
    tokens[:kept]; fed tokens that are not part of the step are masked out of the cache. Returns whether the
    step ended (its Generation is then in `call.results`)."""
    logp = torch.log_softmax(logits[: len(tokens)].float(), -1)
    ent = (-(logp.exp() * logp).sum(-1)).tolist()
    picked = logp.gather(1, torch.tensor(tokens, device=logp.device)[:, None])[:, 0].tolist()
    for j, tok in enumerate(tokens):
        row.out_ids.append(tok)
        row.logps.append(picked[j])
        row.ents.append(ent[j])
        finished = target._finish(row.out_ids, row.logps, row.ents, tok, row.limit, None)
        if finished is not None:
            batch.retract(r, n_fed - lead - min(kept, j + 1))
            finished.n_prefill = row.ctx_prefill  # as a plain step counts it: the context, not the verified step
            finished.n_reused = len(call.full[row.index]) - row.ctx_prefill
            call.results[row.index] = finished
            if target.reuse_cache:
                target.store.put(row.req.key, batch.row(r))
            return True
    batch.retract(r, n_fed - lead - kept)
    row.pending = tokens[-1]
    return False


def _decode_round(target, rows, live, batch: KVBatch, call: Call, done: set) -> None:
    """One plain decoding step for every live row (no draft attached)."""
    tokens = [[rows[r].pending] if r in live else [] for r in range(len(rows))]
    logits = batch.extend(tokens, keep=1)[:, -1]
    for r in live:
        row = rows[r]
        row.stats["target_forwards"] += 1
        if row.sampled:
            nxt = int(torch.multinomial(sampling_probs(logits[r], row.temperature, row.top_p), 1, generator=row.gen))
        else:
            nxt = int(logits[r].argmax())
        if _commit(target, row, logits[r : r + 1], [nxt], kept=0, lead=1, n_fed=1, batch=batch, r=r, call=call):
            done.add(r)


def _draft_batch(draft: HFGenerator, rows: list[_Row], done: set[int]) -> KVBatch:
    """The draft's cache for these rows, holding everything committed so far but the last token (the draft's
    own proposal cache is reused up to where the target diverged from it)."""
    pasts: list[CacheEntry | None] = []
    news: list[list[int]] = []
    for r, row in enumerate(rows):
        req = row.req
        if row.gamma <= 0 or r in done:  # not speculating: a placeholder row the draft never extends
            pasts.append(None)
            news.append([draft.pad_id])
            continue
        ctx = draft.context_ids(req.prompt, req.steps) + row.out_ids[:-1]
        entry, n = draft.store.best(req.key, ctx + [0]) if draft.reuse_cache else (None, 0)
        pasts.append(entry.crop(n) if entry is not None and n > 0 else None)
        news.append(ctx[n:])
        row.draft_pending = row.out_ids[-1:]
    empty = [i for i, nw in enumerate(news) if not nw]
    for i in empty:  # KVBatch needs one new token per row: move the last cached one back to the new side
        past = pasts[i]
        assert past is not None  # no new token: the row's whole context is cached
        news[i] = [past.ids[-1]]
        pasts[i] = past.crop(len(past.ids) - 1) if len(past.ids) > 1 else None
    batch = KVBatch(draft._forward_keep, pasts, news, draft.pad_id, draft.device)
    batch.prefill(keep=1)
    return batch


def _speculate_round(target, draft, rows, live, batch: KVBatch, dbatch: KVBatch, call: Call, done: set) -> None:
    """The draft proposes `gamma` tokens for each live row that speculates; the target checks them all (and takes
    one token alone for the rows that do not) in one forward pass."""
    gammas = {r: rows[r].gamma for r in live}
    proposals: dict[int, list[int]] = {r: [] for r in live}
    dists: dict[int, list[torch.Tensor]] = {r: [] for r in live}
    feed = [rows[r].draft_pending if r in live and gammas[r] > 0 else [] for r in range(len(rows))]
    for step in range(max(gammas.values())):
        logits = dbatch.extend(feed, keep=1)[:, -1]
        feed = [[] for _ in rows]
        for r in live:
            row = rows[r]
            if step >= gammas[r]:
                continue
            if row.sampled:
                q = sampling_probs(logits[r], row.temperature, row.top_p)
                tok = int(torch.multinomial(q, 1, generator=row.gen))
                dists[r].append(q)
            else:
                tok = int(logits[r].argmax())
            proposals[r].append(tok)
            if step < gammas[r] - 1:
                feed[r] = [tok]
    for r in live:
        rows[r].stats["draft_speculated"] += gammas[r]
    width = max(gammas.values()) + 1
    out = batch.extend([[rows[r].pending] + proposals[r] if r in live else [] for r in range(len(rows))], keep=width)
    for r in live:
        row, gamma, props = rows[r], gammas[r], proposals[r]
        row.stats["target_forwards"] += 1
        logits = out[r, width - gamma - 1 :]
        kept, nxt = _verify(row, logits, props, torch.stack(dists[r]) if dists[r] else None)
        before = len(row.out_ids)
        ended = _commit(
            target, row, logits, props[:kept] + [nxt], kept=kept, lead=1, n_fed=gamma + 1, batch=batch, r=r, call=call
        )
        row.stats["draft_accepted"] += min(kept, len(row.out_ids) - before)
        if gamma > 0:  # the draft's cache holds its pending tokens and proposals 1..gamma-1: keep the accepted
            dbatch.retract(r, (gamma - 1) - min(kept, gamma - 1))
        if ended:
            done.add(r)
            continue
        row.draft_pending = ([props[gamma - 1]] if gamma > 0 and kept == gamma else []) + [nxt]
