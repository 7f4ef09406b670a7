"""Surface variation for the testbed: several phrasings of the same step, and a parser that reads every one.

The plain task writes every step one way (`c = b - 9 = 38 - 9 = 29`), so a right draft step is token for token
the target's and token-level speculation loses nothing to wording. The *phrased* task (the design below was
fixed before any model was trained on it) gives every step kind several phrasings of the same computation,
drawn at random per step of every training example, and gives draft and target **different style
distributions**, drawn by independent random streams, as two real models trained on different data have different
habits. A right draft step then usually differs in tokens from the target's greedy step, as on real pairs.

An operation step defines `t = l o r` (values x, y, result z); its forms:

| form      | text                               | example                             |
|-----------|------------------------------------|-------------------------------------|
| full      | `t = l o r = x o y = z`            | `c = b - 9 = 38 - 9 = 29`           |
| subst     | `t = x o y = z`                    | `c = 38 - 9 = 29`                   |
| short     | `t = l o r = z` (no substitution)  | `c = b - 9 = 29`                    |
| reverse   | `x o y = z, so t = z`              | `38 - 9 = 29, so c = 29`            |
| which     | `t = l o r, which is x o y = z`    | `c = b - 9, which is 38 - 9 = 29`   |
| next      | `Next, t = l o r = x o y = z`      | `Next, c = b - 9 = 38 - 9 = 29`     |

and each is written with symbols (`+ - * mod`) or words (`plus minus times modulo`). The final step is one of
`The answer is \\boxed{z}`, `So e = \\boxed{z}` (e the variable asked for) or `Therefore, the answer is
\\boxed{z}`.

Each role has a preferred (form, wording) per operation and a preferred final form, drawn with probability
`MODE_P`; otherwise a step takes any other combination uniformly. The preferences (`ROLE_STYLES`) agree only on
`*` steps, so a greedy draft step that is right is token-identical to the target's on roughly one step in six
(a real Qwen2.5-Coder 0.5B/1.5B pair: 17%), and when they differ the first difference comes after a few
tokens (`c = b` then ` - ` or ` minus `). Which form a step takes changes what the model must compute in its head:
`short` skips the substitution and `reverse` writes the values before naming the variable.

`parse_step` reads any of these (and mixtures of symbols and words) into what the step claims; the checker
(`prm.check_step`) judges the claim, so every phrasing of a right step checks as right.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

FORMS = ("full", "subst", "short", "reverse", "which", "next")
WORDINGS = ("symbols", "words")
FINAL_FORMS = ("answer", "so", "therefore")
WORDS = {"+": "plus", "-": "minus", "*": "times", "mod": "modulo"}
MODE_P = 0.6  # how often a role writes a step in its preferred style

# (form, wording) per operation and the final form, per role.
ROLE_STYLES: dict[str, dict[str, object]] = {
    "target": {
        "+": ("full", "symbols"),
        "-": ("full", "symbols"),
        "*": ("which", "symbols"),
        "mod": ("subst", "symbols"),
        "final": "answer",
    },
    "draft": {
        "+": ("subst", "symbols"),
        "-": ("full", "words"),
        "*": ("which", "symbols"),
        "mod": ("full", "symbols"),
        "final": "so",
    },
}

# Tokenizer pieces the phrasings repeat (besides the plain task's), so steps stay about as long in tokens.
PIECES = (
    "the answer is ",
    ", which is ",
    "Therefore, ",
    " modulo ",
    " minus ",
    " times ",
    " plus ",
    ", so ",
    "Next, ",
    "So ",
)


def op_text(op: str, wording: str) -> str:
    return WORDS[op] if wording == "words" else op


def render_op_step(
    form: str, wording: str, t: str, left: str, op: str, right: str | int, x: int, y: int, z: int
) -> str:
    o = op_text(op, wording)
    if form == "full":
        return f"{t} = {left} {o} {right} = {x} {o} {y} = {z}"
    if form == "subst":
        return f"{t} = {x} {o} {y} = {z}"
    if form == "short":
        return f"{t} = {left} {o} {right} = {z}"
    if form == "reverse":
        return f"{x} {o} {y} = {z}, so {t} = {z}"
    if form == "which":
        return f"{t} = {left} {o} {right}, which is {x} {o} {y} = {z}"
    if form == "next":
        return f"Next, {t} = {left} {o} {right} = {x} {o} {y} = {z}"
    raise ValueError(f"unknown form {form!r}")


def render_final(form: str, asked: str, value: int) -> str:
    if form == "answer":
        return f"The answer is \\boxed{{{value}}}"
    if form == "so":
        return f"So {asked} = \\boxed{{{value}}}"
    if form == "therefore":
        return f"Therefore, the answer is \\boxed{{{value}}}"
    raise ValueError(f"unknown final form {form!r}")


_COMBOS = tuple(itertools.product(FORMS, WORDINGS))


class Style:
    """A role's style distribution; `draw_*` take the role's own random stream."""

    def __init__(self, role: str, mode_p: float = MODE_P):
        if role not in ROLE_STYLES:
            raise ValueError(f"no style for role {role!r}; expected one of {', '.join(ROLE_STYLES)}")
        self.role, self.prefs, self.mode_p = role, ROLE_STYLES[role], mode_p

    def draw_op(self, op: str, rng: random.Random) -> tuple[str, str]:
        mode = self.prefs[op]
        if rng.random() < self.mode_p:
            assert isinstance(mode, tuple)  # an operation's preference is a (form, wording) pair
            return mode
        return rng.choice([c for c in _COMBOS if c != mode])

    def draw_final(self, rng: random.Random) -> str:
        mode = self.prefs["final"]
        if rng.random() < self.mode_p:
            assert isinstance(mode, str)  # the final preference is a form's name
            return mode
        return rng.choice([f for f in FINAL_FORMS if f != mode])


# ---------------------------------------------------------------- reading any phrasing


@dataclass(frozen=True)
class Claim:
    """What an operation step states. Names absent from the phrasing are None (`subst` and `reverse` name only
    the variable they define; `short` gives no values)."""

    target: str
    op: str
    left: str | None
    right: str | int | None
    x: int | None
    y: int | None
    result: int


_OP = r"(\+|-|\*|mod|plus|minus|times|modulo)"
_N = r"(-?\d+)"
_V = r"([a-z])"
_R = r"([a-z]|\d+)"
_SYMBOL = {"plus": "+", "minus": "-", "times": "*", "modulo": "mod"}
_PATTERNS = {
    "full": re.compile(rf"^{_V} = {_V} {_OP} {_R} = {_N} {_OP} {_N} = {_N}$"),
    "subst": re.compile(rf"^{_V} = {_N} {_OP} {_N} = {_N}$"),
    "short": re.compile(rf"^{_V} = {_V} {_OP} {_R} = {_N}$"),
    "reverse": re.compile(rf"^{_N} {_OP} {_N} = {_N}, so {_V} = {_N}$"),
    "which": re.compile(rf"^{_V} = {_V} {_OP} {_R}, which is {_N} {_OP} {_N} = {_N}$"),
    "next": re.compile(rf"^Next, {_V} = {_V} {_OP} {_R} = {_N} {_OP} {_N} = {_N}$"),
}
_FINAL = re.compile(r"^(?:The answer is |Therefore, the answer is |So ([a-z]) = )\\boxed\{([^{}]*)\}$")


def _sym(word: str) -> str:
    return _SYMBOL.get(word, word)


def _operand(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def parse_step(text: str) -> Claim | None:
    """The claim of an operation step in any phrasing, or None (also when its two operators disagree or the
    two results of a `reverse` step differ)."""
    s = text.strip()
    for form, pattern in _PATTERNS.items():
        m = pattern.match(s)
        if not m:
            continue
        g = m.groups()
        if form in ("full", "which", "next"):
            t, left, o1, right, x, o2, y, z = g
            if _sym(o1) != _sym(o2):
                return None
            return Claim(t, _sym(o1), left, _operand(right), int(x), int(y), int(z))
        if form == "subst":
            t, x, o, y, z = g
            return Claim(t, _sym(o), None, None, int(x), int(y), int(z))
        if form == "short":
            t, left, o, right, z = g
            return Claim(t, _sym(o), left, _operand(right), None, None, int(z))
        x, o, y, z, t, z2 = g  # reverse
        if z != z2:
            return None
        return Claim(t, _sym(o), None, None, int(x), int(y), int(z))
    return None


def parse_final(text: str) -> tuple[str | None, str] | None:
    """(the variable named, or None; the boxed text) of a final step in any phrasing, or None."""
    m = _FINAL.match(text.strip())
    return (m.group(1), m.group(2).strip()) if m else None
