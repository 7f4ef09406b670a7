"""What both in-process decoding paths (the plain one, hf.py, and the static-cache one, static_kv.py) share: the
requests of one `generate` call and their state while their tokens are picked one by one.

`Call.start` answers the requests that need no work (no token budget, or cancelled) and lists the others with
their context ids; `Decoding` holds, per row still decoding, its sampling settings and seed, the tokens, log-probs
and entropies so far (a continued partial step starts from the partial's), and `advance` takes one step of
logits, picks the tokens and says which rows go on. How keys/values are kept is the path's own business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..types import Generation, GenerationRequest, Sampling, request_seed


class Call:
    """One generate call: `results` (filled in as rows finish), `active` (request indices with work), `full`
    (each active request's context ids, a partial step's own ids included)."""

    def __init__(self, gen, requests: Sequence[GenerationRequest]):
        self.gen, self.requests = gen, requests
        self.results: list[Generation | None] = [None] * len(requests)
        self.active: list[int] = []
        self.full: dict[int, list[int]] = {}
        for i, req in enumerate(requests):
            if req.max_new_tokens <= 0 or req.key in gen._cancelled:
                p = req.prefix
                self.results[i] = Generation(
                    text=p.text if p else "",
                    stop="length",
                    token_ids=list(p.token_ids or []) if p else [],
                    logprobs=list(p.logprobs or []) if p else [],
                    extras={"generator": gen.name},
                )
                continue
            self.active.append(i)
            ids = gen.context_ids(req.prompt, req.steps)
            if req.prefix is not None:
                ids += list(req.prefix.token_ids or gen.encode(req.prefix.text, False))
            self.full[i] = ids

    def generations(self) -> list[Generation]:
        """The results, once every request has one (finished, cancelled, or answered without work)."""
        out = [g for g in self.results if g is not None]
        assert len(out) == len(self.results), "a request of this call has no result"
        return out


class Decoding:
    """The rows of a call being decoded, in batch order (`rows[r]` is the request index of batch row r)."""

    def __init__(self, call: Call, n_prefill: dict[int, int]):
        gen, reqs = call.gen, call.requests
        self.call, self.gen, self.n_prefill = call, gen, n_prefill
        self.rows = list(call.active)
        self.temps, self.top_ps, self.gens = [], [], []
        self.out_ids, self.logps, self.ents, self.limit = {}, {}, {}, {}
        self.dists: dict[int, list] = {}  # sampled rows: the distribution each token was drawn from
        for i in self.rows:
            req = reqs[i]
            t, p, seed = (req.sampling or Sampling()).over(gen.temperature, gen.top_p, gen.seed)
            self.temps.append(t)
            self.top_ps.append(p)
            g = None
            if t > 0:
                g = torch.Generator(device=gen.device)
                g.manual_seed(request_seed(seed, req.seed_source, req.step_index, req.sample))
            self.gens.append(g)
            prefix = req.prefix
            self.out_ids[i] = list(prefix.token_ids or []) if prefix is not None else []
            self.logps[i] = list(prefix.logprobs or []) if prefix is not None else []
            self.ents[i] = list(prefix.extras.get("entropies") or []) if prefix is not None else []
            if t > 0:
                before = prefix.extras.get("dists") if prefix is not None else None
                self.dists[i] = list(before) if before is not None else []
            self.limit[i] = len(self.out_ids[i]) + req.max_new_tokens

    def advance(
        self, logits: torch.Tensor, hidden: torch.Tensor | None, on_finish: Callable[[int, int], None] | None = None
    ) -> list[int]:
        """Pick each row's next token; rows whose step ends (or whose problem was cancelled) get their result
        and `on_finish(batch row, request index)`. Returns the batch rows that go on (and keeps only them)."""
        gen, call = self.gen, self.call
        tokens, probs = gen._pick(logits, self.temps, self.top_ps, self.gens)
        logp = torch.log_softmax(logits, -1)
        chosen_lp = logp.gather(1, tokens[:, None])[:, 0].tolist()
        entropy = (-(logp.exp() * logp).sum(-1)).tolist()
        tokens = tokens.tolist()  # one read off the device per token, not one per row
        keep = []
        for r, i in enumerate(self.rows):
            if call.requests[i].key in gen._cancelled:  # dropped: nothing more is computed for it
                call.results[i] = Generation(
                    text="", stop="length", token_ids=[], logprobs=[], extras={"generator": gen.name, "cancelled": True}
                )
                continue
            t = tokens[r]
            if probs[r] is not None:
                self.dists[i].append(probs[r])
            self.out_ids[i].append(t)
            self.logps[i].append(chosen_lp[r])
            self.ents[i].append(entropy[r])
            done = gen._finish(
                self.out_ids[i], self.logps[i], self.ents[i], t, self.limit[i], None if hidden is None else hidden[r]
            )
            if done is None:
                keep.append(r)
                continue
            # What a target needs to verify this step (speculative.py): the tokens as drawn, the vocabulary
            # they belong to and, when sampled, the distribution each was drawn from.
            done.extras.update(spec_ids=list(self.out_ids[i]), vocab=gen.vocab_signature)
            if i in self.dists:
                done.extras["dists"] = torch.stack(self.dists[i]) if self.dists[i] else None
            done.n_prefill = self.n_prefill[i]
            done.n_reused = len(call.full[i]) - self.n_prefill[i]
            call.results[i] = done
            if on_finish is not None:
                on_finish(r, i)
        self.rows = [self.rows[r] for r in keep]
        self.temps = [self.temps[r] for r in keep]
        self.top_ps = [self.top_ps[r] for r in keep]
        self.gens = [self.gens[r] for r in keep]
        return keep

    def last_tokens(self) -> list[int]:
        return [self.out_ids[i][-1] for i in self.rows]
