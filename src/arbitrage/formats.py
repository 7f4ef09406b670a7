"""Text formats shared by the router (at run time and at training time) and the PRMs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .errors import ConfigError

from .types import Step

AUTHOR_TAGS = {"draft": "Model 0: ", "target": "Model 1: "}


def router_segments(question: str, steps: Sequence[Step], draft: Step | str, separator: str = "\n\n",
                    author_tags: bool = True) -> list[str]:
    """The router's input (method.md, "Router training" step 2) as text segments.

    The problem + "\\n"; then each earlier step with its author tag and the separator; then
    "Model 0: " + draft + separator. Segments let a cached scorer prefill only what is new.
    """
    def tag(author: str) -> str:
        return AUTHOR_TAGS[author] if author_tags else ""

    segs = [question + "\n"]
    segs += [tag(s.author) + s.text + separator for s in steps]
    draft_text = draft.text if isinstance(draft, Step) else draft
    segs.append(tag("draft") + draft_text + separator)
    return segs


def router_text(question: str, steps: Sequence[Step], draft: Step | str, separator: str = "\n\n",
                author_tags: bool = True) -> str:
    return "".join(router_segments(question, steps, draft, separator, author_tags))


@dataclass(frozen=True)
class PRMFormat:
    """How a PRM sees a solution: `prefix` (with {question}) then each step followed by `step_suffix`; `bos`:
    tokenize the prefix with the tokenizer's special tokens."""

    prefix: str = "{question}\n"
    step_suffix: str = "\n"
    bos: bool = True

    @classmethod
    def named(cls, name: str, separator: str = "\n\n") -> "PRMFormat":
        if name == "skywork":  # Skywork-o1-Open-PRM: bos + problem + "\n", each step + "\n"
            return cls("{question}\n", "\n", True)
        if name == "separator":  # problem and steps each followed by the run's step separator
            return cls("{question}" + separator, separator, True)
        raise ConfigError(f"unknown PRM format {name!r}; use 'skywork' or 'separator'")

    def row_ids(self, encode: Callable[..., Sequence[int]], question: str, steps: Sequence[Step], candidate: Step) -> list[int]:
        """Token ids the PRM reads to score `candidate` after `steps`; `encode(text, special=False)`. Shared by
        the in-process and the served PRM, so both see exactly the same rows."""
        ids = list(encode(self.prefix.format(question=question), self.bos))
        for s in (*steps, candidate):
            ids += encode(s.text) + encode(self.step_suffix)
        return ids
