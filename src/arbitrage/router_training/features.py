"""Features of a draft step that the draft computed anyway: per-token log-probs and entropies, the step's
length and position, the authors of the earlier steps, and optionally the draft's last hidden state.

The same function computes them at training time (from the records of `generate` runs) and at run time (from
the `RouteRequest` the engine hands the router), so a probe router sees identical inputs in both places.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from ..types import Step

GROUPS = ("logprobs", "entropies", "shape", "hidden")
DEFAULT_GROUPS = ("logprobs", "entropies", "shape")

_STATS = ("mean", "min", "max", "std", "q10", "q25", "q50", "q90", "first", "last")
_NAMES = {
    "logprobs": [f"logprob_{s}" for s in _STATS] + ["logprob_sum", "frac_p_below_0.5", "frac_p_below_0.1"],
    "entropies": [f"entropy_{s}" for s in _STATS] + ["frac_entropy_above_1"],
    "shape": [
        "n_tokens",
        "log_n_tokens",
        "log_chars",
        "stop_eos",
        "stop_length",
        "step_index",
        "log_step_index",
        "frac_target_before",
        "prev_by_target",
    ],
}


def feature_names(groups: Sequence[str], hidden_dim: int = 0) -> list[str]:
    names: list[str] = []
    for g in groups:
        names += [f"hidden_{i}" for i in range(hidden_dim)] if g == "hidden" else _NAMES[g]
    return names


def _stats(xs: np.ndarray) -> list[float]:
    if xs.size == 0:
        return [0.0] * len(_STATS)
    q10, q25, q50, q90 = np.quantile(xs, [0.1, 0.25, 0.5, 0.9])
    return [
        float(xs.mean()),
        float(xs.min()),
        float(xs.max()),
        float(xs.std()),
        float(q10),
        float(q25),
        float(q50),
        float(q90),
        float(xs[0]),
        float(xs[-1]),
    ]


def _per_token(draft: Step, what: str) -> np.ndarray:
    vals = draft.logprobs if what == "logprobs" else draft.extras.get(what)
    if vals is None:
        hint = (
            "in-process drafts report them, served drafts when the server returns top log-probs"
            if what == "entropies"
            else "the draft backend must return per-token log-probs"
        )
        raise ConfigError(
            f"this probe router reads the draft's per-token {what}, and the draft step has none: "
            f"{hint}, or train the probe without them (--probe-features)"
        )
    return np.asarray(vals, dtype=np.float64)


def glimpse_of(draft: Step, k: int) -> Step:
    """The draft step as a router deciding after its first `k` tokens sees it: the first k log-probs and
    entropies, at most k tokens, stopped at "length" unless the step ended within k tokens, and no text (a
    probe reads no text, and the same holds at training and at run time). Idempotent."""
    n = draft.n_tokens
    ended = n <= k and draft.stop != "length"
    lps = draft.logprobs[:k] if draft.logprobs is not None else None
    extras = {key: v[:k] for key, v in draft.extras.items() if key == "entropies" and v is not None}
    return Step(
        author=draft.author,
        text="",
        stop=draft.stop if ended else "length",
        n_tokens=min(n, k),
        logprobs=lps,
        extras=extras,
    )


def step_features(
    draft: Step,
    history_authors: Sequence[str],
    groups: Sequence[str],
    hidden_dim: int = 0,
    decide_after: int | None = None,
) -> list[float]:
    """The feature vector of one draft step after earlier steps written by `history_authors` (with
    `decide_after` = k, of the step's first k tokens only: `glimpse_of`)."""
    if decide_after is not None:
        if "hidden" in groups:
            raise ConfigError(
                "a probe that decides after the first tokens cannot read the draft's last hidden "
                "state (it is recorded at the end of the step)"
            )
        draft = glimpse_of(draft, decide_after)
    out: list[float] = []
    for g in groups:
        if g == "logprobs":
            lp = _per_token(draft, "logprobs")
            out += _stats(lp) + [
                float(lp.sum()),
                float((lp < math.log(0.5)).mean()) if lp.size else 0.0,
                float((lp < math.log(0.1)).mean()) if lp.size else 0.0,
            ]
        elif g == "entropies":
            ent = _per_token(draft, "entropies")
            out += _stats(ent) + [float((ent > 1.0).mean()) if ent.size else 0.0]
        elif g == "shape":
            k = len(history_authors)
            n_target = sum(a == "target" for a in history_authors)
            out += [
                float(draft.n_tokens),
                math.log1p(draft.n_tokens),
                math.log1p(len(draft.text)),
                float(draft.stop == "eos"),
                float(draft.stop == "length"),
                float(k),
                math.log1p(k),
                n_target / k if k else 0.0,
                float(k > 0 and history_authors[-1] == "target"),
            ]
        elif g == "hidden":
            h = draft.extras.get("last_hidden")
            if h is None:
                raise ConfigError(
                    "this probe router reads the draft's last hidden state, and the draft step has "
                    "none: run the draft with hidden states on (ModelOptions.return_hidden)"
                )
            if len(h) != hidden_dim:
                raise ConfigError(
                    f"the draft's hidden state has {len(h)} values; this probe router was trained on "
                    f"{hidden_dim} (another draft model?)"
                )
            out += [float(x) for x in h]
        else:
            raise ConfigError(f"unknown probe feature group {g!r}; use {', '.join(GROUPS)}")
    return out


def feature_matrix(
    drafts: Sequence[Step],
    histories: Sequence[Sequence[str]],
    groups: Sequence[str],
    hidden_dim: int = 0,
    decide_after: int | None = None,
) -> np.ndarray:
    return np.asarray(
        [step_features(d, h, groups, hidden_dim, decide_after) for d, h in zip(drafts, histories)], dtype=np.float64
    ).reshape(len(drafts), -1)
