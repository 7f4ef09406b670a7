"""Text formats shared by training and serving: the router's input and files, and the PRMs' row layout.

One owner each, so a router trained here reads exactly what it will be served (no train/serve skew):
- `RouterFormat` builds the router's annotated input (docs/method.md, "Router training" step 2) and its token ids;
  `scoring.hf.HFRouter`, `backends.pooling.PoolingRouter` and `router_training.train` all encode through it.
- `read_router_meta` / `write_router_meta` own `arbitrage_router.json`, the file beside every trained router
  that says its kind, the format it was trained with and how it was trained.
- `PRMFormat` lays out a solution for a PRM, for the in-process and the served PRM alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import ConfigError, ModelLoadError
from .types import DEFAULT_SEPARATOR, Step

AUTHOR_TAGS = {"draft": "Model 0: ", "target": "Model 1: "}
ROUTER_META = "arbitrage_router.json"

Encode = Callable[..., Sequence[int]]  # encode(text, special) -> token ids


@dataclass(frozen=True)
class RouterFormat:
    """The router's input: the problem + "\\n"; each earlier step with its author tag and the separator; then
    "Model 0: " + draft + separator. `author_tags=False` leaves the tags out (the paper's Table 2 ablation)."""

    separator: str = DEFAULT_SEPARATOR
    author_tags: bool = True

    @classmethod
    def from_meta(cls, meta: dict | None) -> RouterFormat:
        meta = meta or {}
        return cls(meta.get("separator", DEFAULT_SEPARATOR), meta.get("author_tags", True))

    def segments(self, question: str, steps: Sequence[Step], draft: Step | str) -> list[str]:
        """The input as text segments (they let a cached scorer prefill only what is new)."""

        def tag(author: str) -> str:
            return AUTHOR_TAGS[author] if self.author_tags else ""

        segs = [question + "\n"]
        segs += [tag(s.author) + s.text + self.separator for s in steps]
        draft_text = draft.text if isinstance(draft, Step) else draft
        segs.append(tag("draft") + draft_text + self.separator)
        return segs

    def text(self, question: str, steps: Sequence[Step], draft: Step | str) -> str:
        return "".join(self.segments(question, steps, draft))

    def row_ids(
        self, encode: Encode, question: str, steps: Sequence[Step], draft: Step | str, max_length: int | None = None
    ) -> list[int]:
        """Token ids, segment by segment: the question with special tokens, every later segment without. When
        longer than `max_length`, the oldest tokens are cut (the router reads the last one)."""
        segs = self.segments(question, steps, draft)
        ids = list(encode(segs[0], True))
        for seg in segs[1:]:
            ids += encode(seg, False)
        if max_length and len(ids) > max_length:
            ids = ids[-max_length:]
        return ids


def router_meta_path(router_dir: str) -> str:
    return os.path.join(os.path.expanduser(router_dir), ROUTER_META)


def read_router_meta(router_dir: str) -> dict | None:
    """The router's `arbitrage_router.json`, or None when the directory has none."""
    path = router_meta_path(router_dir)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return meta


def write_router_meta(router_dir: str, meta: dict) -> None:
    os.makedirs(router_dir, exist_ok=True)
    with open(router_meta_path(router_dir), "w") as f:
        json.dump(meta, f, indent=1)


@dataclass(frozen=True)
class PRMFormat:
    """How a PRM sees a solution: `prefix` (with {question}) then each step followed by `step_suffix`; `bos`:
    tokenize the prefix with the tokenizer's special tokens."""

    prefix: str = "{question}\n"
    step_suffix: str = "\n"
    bos: bool = True

    @classmethod
    def named(cls, name: str, separator: str = DEFAULT_SEPARATOR) -> PRMFormat:
        if name == "skywork":  # Skywork-o1-Open-PRM: bos + problem + "\n", each step + "\n"
            return cls("{question}\n", "\n", True)
        if name == "separator":  # problem and steps each followed by the run's step separator
            return cls("{question}" + separator, separator, True)
        raise ConfigError(f"unknown PRM format {name!r}; use 'skywork' or 'separator'")

    def row_ids(self, encode: Encode, question: str, steps: Sequence[Step], candidate: Step) -> list[int]:
        """Token ids the PRM reads to score `candidate` after `steps`; `encode(text, special=False)`. Shared by
        the in-process and the served PRM, so both see exactly the same rows."""
        ids = list(encode(self.prefix.format(question=question), self.bos))
        for s in (*steps, candidate):
            ids += encode(s.text)
            ids += encode(self.step_suffix)
        return ids
