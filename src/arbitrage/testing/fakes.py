"""Scripted stand-ins for the models: deterministic, instant, and they count every call they get."""

from __future__ import annotations

from ..types import Generation, Problem


def problems(lengths: list[int]) -> list[Problem]:
    """Problem i ends (its model writes end-of-sequence) at step lengths[i] - 1."""
    return [
        Problem(id=f"p{i}", question=f"q{i}", prompt=f"Q{i}:", gold="1", meta={"n_steps": n})
        for i, n in enumerate(lengths)
    ]


class FakeGenerator:
    """Step i of a problem is "<initial><i>" (with \\boxed{1} at its last step), `tokens_per_step` tokens long.
    `logprobs(key, i)` scripts the per-token log-probs (entropies are their negatives). A request with
    max_new_tokens below the step's length gets that many tokens (a partial step, stop "length"); a request
    with a `prefix` continues it. `written` counts the tokens each request wrote."""

    def __init__(self, name: str, lengths: dict[str, int], tokens_per_step: int = 3, logprobs=None):
        self.name, self.separator, self.lengths, self.tokens = name, "\n\n", lengths, tokens_per_step
        self.logprobs = logprobs or (lambda key, i: [-0.1] * tokens_per_step)
        self.calls: list[list[str]] = []  # keys of each batched call
        self.written: list[tuple[str, int, int]] = []  # (key, step index, tokens written by this request)
        self.released: list[str] = []

    def generate(self, requests):
        self.calls.append([r.key for r in requests])
        out = []
        for r in requests:
            i = len(r.steps)
            last = i + 1 >= self.lengths[r.key]
            text = f"{self.name[0]}{i}" + (" \\boxed{1}" if last else "")
            lps = list(self.logprobs(r.key, i))
            start = r.prefix.n_tokens if r.prefix is not None else 0
            end = min(len(lps), start + r.max_new_tokens)
            self.written.append((r.key, i, end - start))
            if end < len(lps):  # a partial step: the first `end` tokens
                out.append(
                    Generation(
                        text=text[:end],
                        stop="length",
                        token_ids=list(range(end)),
                        logprobs=lps[:end],
                        extras={"entropies": [-x for x in lps[:end]], "generator": self.name},
                    )
                )
                continue
            out.append(
                Generation(
                    text=text,
                    stop="eos" if last else "separator",
                    token_ids=list(range(len(lps))),
                    logprobs=lps,
                    extras={"entropies": [-x for x in lps], "generator": self.name},
                )
            )
        return out

    def release(self, key):
        self.released.append(key)

    @property
    def n_requests(self) -> int:
        return sum(len(c) for c in self.calls)


class FakePRM:
    """Draft steps at even indices score 0.9, at odd ones 0.2; target steps always 0.8."""

    name = "prm"

    def __init__(self):
        self.calls: list[list[str]] = []
        self.released: list[str] = []

    def score(self, requests):
        self.calls.append([r.key for r in requests])
        return [
            [(0.8 if c.author == "target" else 0.9 if len(r.steps) % 2 == 0 else 0.2) for c in r.candidates]
            for r in requests
        ]

    def release(self, key):
        self.released.append(key)


class FakeRouter:
    """y_hat = 0.9 at step indices divisible by 3, else 0.1."""

    name = "router"

    def __init__(self):
        self.calls: list[list[str]] = []
        self.released: list[str] = []

    def predict(self, requests):
        self.calls.append([r.key for r in requests])
        return [0.9 if len(r.steps) % 3 == 0 else 0.1 for r in requests]

    def release(self, key):
        self.released.append(key)


class ForwardTokens:
    """Counts the tokens that actually reach a torch model's forward pass (not what a backend says it did):
    for every call, the number of real (unpadded) new tokens in each row. Use as a context manager."""

    def __init__(self, model, pad_id: int | None = None):
        self.model, self.pad_id = model, pad_id
        self.calls: list[list[int]] = []
        self._handle = None

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        n = ids.shape[1]
        if mask is not None and mask.ndim == 4:  # the static path: right-padded rows, padding is pad_id
            self.calls.append([int((row != self.pad_id).sum()) for row in ids])
        elif mask is None:
            self.calls.append([n] * ids.shape[0])
        else:
            self.calls.append([int(x) for x in mask[:, -n:].sum(1)])

    def __enter__(self):
        self._handle = self.model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()

    @property
    def total(self) -> int:
        return sum(sum(c) for c in self.calls)
