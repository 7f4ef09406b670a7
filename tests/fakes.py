"""Scripted stand-ins for the models: deterministic, instant, and they count every call they get."""

from __future__ import annotations

from arbitrage.types import Generation, Problem


def problems(lengths: list[int]) -> list[Problem]:
    """Problem i ends (its model writes end-of-sequence) at step lengths[i] - 1."""
    return [Problem(id=f"p{i}", question=f"q{i}", prompt=f"Q{i}:", gold="1", meta={"n_steps": n})
            for i, n in enumerate(lengths)]


class FakeGenerator:
    def __init__(self, name: str, lengths: dict[str, int], tokens_per_step: int = 3):
        self.name, self.separator, self.lengths, self.tokens = name, "\n\n", lengths, tokens_per_step
        self.calls: list[list[str]] = []     # keys of each batched call
        self.released: list[str] = []

    def generate(self, requests):
        self.calls.append([r.key for r in requests])
        out = []
        for r in requests:
            i = len(r.steps)
            last = i + 1 >= self.lengths[r.key]
            text = f"{self.name[0]}{i}" + (" \\boxed{1}" if last else "")
            out.append(Generation(text=text, stop="eos" if last else "separator", token_ids=list(range(self.tokens)),
                                  logprobs=[-0.1] * self.tokens))
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

    def score(self, requests):
        self.calls.append([r.key for r in requests])
        return [[(0.8 if c.author == "target" else 0.9 if len(r.steps) % 2 == 0 else 0.2) for c in r.candidates]
                for r in requests]

    def release(self, key):
        pass


class FakeRouter:
    """y_hat = 0.9 at step indices divisible by 3, else 0.1."""

    name = "router"

    def __init__(self):
        self.calls: list[list[str]] = []

    def predict(self, requests):
        self.calls.append([r.key for r in requests])
        return [0.9 if len(r.steps) % 3 == 0 else 0.1 for r in requests]

    def release(self, key):
        pass
