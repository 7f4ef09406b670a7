"""Text formats shared by the router (at run time and at training time) and the PRMs."""

from __future__ import annotations

from typing import Sequence

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
