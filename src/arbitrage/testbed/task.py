"""The synthetic reasoning task: chained arithmetic on named variables.

A problem gives one constant and 2-4 operations; each defines a new variable from the one before it (and, for
some additions and subtractions, from an earlier one as well)::

    Let a = 37. b = a + 8. c = b - 29. d = c * 4. e = d mod 7. What is e?

The reference solution writes one step per operation, restating the definition, substituting the values
and giving the result, then boxes the answer; steps are separated by "\\n\\n"::

    b = a + 8 = 37 + 8 = 45
    ...
    The answer is \\boxed{1}

Every value stays in [0, 99]. Step difficulty comes from the operation and the operands, drawn per step: adding
a one-digit number without a carry is easy, carries and borrows are harder, multiplying needs a two-digit product,
`mod` needs a division, and a variable operand needs a look-up further back. (Values up to 999 were tried
first: neither tiny model learnt three-digit arithmetic in a quarter of an hour of CPU training, and both
solved under 10% of the problems.) Which split a problem belongs to is a function of its question text (a
hash), so train/validation/test never share a question whatever the seeds.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ..types import Problem
from .phrasing import Style, render_final, render_op_step

SEPARATOR = "\n\n"
SPLITS = ("train", "validation", "test")
MAX_VALUE = 99
MIN_OPS, MAX_OPS = 2, 4
OPS = ("+", "-", "*", "mod")
# Share of the hash space per split (train 80%, validation 10%, test 10%).
_SPLIT_BOUNDS = {"train": (0, 80), "validation": (80, 90), "test": (90, 100)}
_VARS = "abcdef"

_DEF_RE = re.compile(r"^([a-z]) = ([a-z])(?: (\+|-|\*|mod) ([a-z]|\d+))?$")
_BOX_RE = re.compile(r"\\boxed\{([^{}]*)\}")


@dataclass(frozen=True)
class Op:
    """`target = left op right`; `right` is a variable name or an int literal."""

    target: str
    left: str
    op: str
    right: str | int

    @property
    def kind(self) -> str:
        """A coarse difficulty label: the operation and whether it combines two variables."""
        if isinstance(self.right, str):
            return f"var{self.op}var"
        return f"{self.op}{len(str(self.right))}d"  # e.g. "*1d": times a one-digit literal

    def definition(self) -> str:
        return f"{self.target} = {self.left} {self.op} {self.right}"


def apply_op(op: str, x: int, y: int) -> int | None:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "mod":
        return x % y if y != 0 else None
    raise ValueError(op)


@dataclass(frozen=True)
class Chain:
    """A parsed question: the initial constant, the operations in order, and the variable asked for."""

    start: tuple[str, int]
    ops: tuple[Op, ...]
    asked: str

    def values(self) -> dict[str, int]:
        vals = {self.start[0]: self.start[1]}
        for o in self.ops:
            right = vals[o.right] if isinstance(o.right, str) else o.right
            value = apply_op(o.op, vals[o.left], right)
            assert value is not None, f"{o.definition()}: mod 0"  # never in a generated chain (mod 2..19)
            vals[o.target] = value
        return vals

    @property
    def answer(self) -> int:
        return self.values()[self.asked]

    def question(self) -> str:
        parts = [f"Let {self.start[0]} = {self.start[1]}."] + [o.definition() + "." for o in self.ops]
        return " ".join(parts) + f" What is {self.asked}?"

    def solution_steps(self, style: Style | None = None, rng: random.Random | None = None) -> list[str]:
        """The reference solution: the plain task's one phrasing, or with `style` (the phrased task) each step
        in a phrasing drawn from that role's style distribution with `rng`."""
        vals = self.values()
        steps = []
        for o in self.ops:
            right = vals[o.right] if isinstance(o.right, str) else o.right
            if style is None:
                steps.append(f"{o.definition()} = {vals[o.left]} {o.op} {right} = {vals[o.target]}")
            else:
                form, wording = style.draw_op(o.op, rng or random.Random(0))
                steps.append(
                    render_op_step(form, wording, o.target, o.left, o.op, o.right, vals[o.left], right, vals[o.target])
                )
        if style is None:
            steps.append(f"The answer is \\boxed{{{vals[self.asked]}}}")
        else:
            steps.append(render_final(style.draw_final(rng or random.Random(0)), self.asked, vals[self.asked]))
        return steps


def parse_question(question: str) -> Chain:
    """Inverse of `Chain.question`; raises ValueError on text that is not a testbed question."""
    m = re.fullmatch(r"Let ([a-z]) = (\d+)\.((?: [a-z] = [^.]+\.)*) What is ([a-z])\?", question.strip())
    if not m:
        raise ValueError(f"not a testbed question: {question[:80]!r}")
    ops = []
    for part in filter(None, (p.strip() for p in m.group(3).split("."))):
        d = _DEF_RE.match(part)
        if not d or d.group(3) is None:
            raise ValueError(f"bad definition {part!r}")
        right = d.group(4)
        ops.append(Op(d.group(1), d.group(2), d.group(3), int(right) if right.isdigit() else right))
    return Chain((m.group(1), int(m.group(2))), tuple(ops), m.group(4))


def prompt(question: str) -> str:
    """The exact text the draft and target continue: the question and the step separator."""
    return question + SEPARATOR


def solution_text(chain: Chain, style: Style | None = None, rng: random.Random | None = None) -> str:
    return SEPARATOR.join(chain.solution_steps(style, rng))


def extract_answer(text: str) -> str | None:
    """The content of the last \\boxed{...} in `text`, stripped, or None."""
    found = _BOX_RE.findall(text)
    return found[-1].strip() if found else None


def split_of(question: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") % 100
    return next(s for s, (lo, hi) in _SPLIT_BOUNDS.items() if lo <= bucket < hi)


def _pick(rng: random.Random, lo: int, hi: int, digit_weights: tuple[float, ...]) -> int:
    """A number in [lo, hi] whose digit count is drawn by `digit_weights` (1, 2, 3 digits) when possible."""
    digits = rng.choices(range(1, len(digit_weights) + 1), digit_weights)[0]
    a, b = max(lo, 10 ** (digits - 1) if digits > 1 else 0), min(hi, 10**digits - 1)
    return rng.randint(a, b) if a <= b else rng.randint(lo, hi)


# How often each operation is drawn (among those that keep the result in range). `mod` needs a division, the
# hardest step for a small LM; it is drawn less often so that most problems stay within reach of the target.
# (The first mix, 2-5 operations with + .3, - .3, * .25, mod .15 and 20% variable operands, left the tiny draft
# at 8.5% answer accuracy; this one puts a trained draft near half of the target's, as in the paper's pairs.)
OP_WEIGHTS = {"+": 0.35, "-": 0.35, "*": 0.18, "mod": 0.12}
VAR_OPERAND = 0.15  # share of + and - steps whose right operand is an earlier variable (a look-up further back)


def _sample_op(rng: random.Random, target: str, vals: dict[str, int]) -> tuple[Op, int]:
    """One operation on the latest value; the operand is drawn within what keeps the result in [0, MAX_VALUE]."""
    names = list(vals)
    left = names[-1]  # a chain: each step works on the value the step before it computed
    x = vals[left]
    feasible = [
        op for op, ok in (("+", x < MAX_VALUE), ("-", x > 0), ("*", 2 <= x <= MAX_VALUE // 2), ("mod", x > 0)) if ok
    ]
    op = rng.choices(feasible, [OP_WEIGHTS[o] for o in feasible])[0]
    others = [n for n in names[:-1] if (op == "+" and x + vals[n] <= MAX_VALUE) or (op == "-" and vals[n] <= x)]
    if op in "+-" and others and rng.random() < VAR_OPERAND:
        name = rng.choice(others)
        right: str | int = name
        y = vals[name]
    elif op == "+":
        y = right = _pick(rng, 1, MAX_VALUE - x, (0.7, 0.3))
    elif op == "-":
        y = right = _pick(rng, 1, x, (0.7, 0.3))
    elif op == "*":
        y = right = _pick(rng, 2, max(2, MAX_VALUE // x), (0.8, 0.2))
    else:
        y = right = rng.randint(2, 19)
    value = apply_op(op, x, y)
    assert value is not None  # y >= 2 for mod
    return Op(target, left, op, right), value


def sample_chain(rng: random.Random) -> Chain:
    n_ops = rng.randint(MIN_OPS, MAX_OPS)
    start = (_VARS[0], rng.randint(2, MAX_VALUE))
    vals = {start[0]: start[1]}
    ops = []
    for i in range(1, n_ops + 1):
        op, value = _sample_op(rng, _VARS[i], vals)
        ops.append(op)
        vals[_VARS[i]] = value
    return Chain(start, tuple(ops), _VARS[n_ops])


def iter_chains(split: str, seed: int) -> Iterator[Chain]:
    """An endless seeded stream of distinct chains of `split`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    rng = random.Random(f"testbed/{split}/{seed}")
    seen: set[str] = set()
    while True:
        chain = sample_chain(rng)
        q = chain.question()
        if q not in seen and split_of(q) == split:
            seen.add(q)
            yield chain


def make_chains(split: str, n: int, seed: int) -> list[Chain]:
    """`n` distinct chains of `split`, the same for the same (split, seed); a longer list extends a shorter."""
    return list(itertools.islice(iter_chains(split, seed), n))


def make_problems(split: str, n: int, seed: int = 0) -> list[Problem]:
    """Problems for the engine: `prompt` is what the models continue, `gold` the answer, and
    `meta["solution"]` the reference solution (steps joined by the separator)."""
    out = []
    for i, chain in enumerate(make_chains(split, n, seed)):
        q = chain.question()
        out.append(
            Problem(
                id=f"testbed-{split}-{seed}-{i}",
                question=q,
                prompt=prompt(q),
                gold=str(chain.answer),
                meta={"solution": solution_text(chain), "split": split, "kinds": [o.kind for o in chain.ops]},
            )
        )
    return out


DEFAULT_N = 200


def problems_from_spec(spec: str) -> list[Problem]:
    """`testbed:SPLIT[:N[:SEED]]` (N defaults to 200, SEED to 0) -> problems, as `--data` of `arbitrage run`.

    The prompt is the task's own (question + separator), not a chat template: the testbed models were trained
    on exactly that text."""
    from ..errors import DataError

    parts = spec.split(":")
    if parts[0] != "testbed" or len(parts) > 4:
        raise DataError(f"{spec}: expected testbed:SPLIT[:N[:SEED]], e.g. testbed:test:200")
    split = parts[1] if len(parts) > 1 and parts[1] else "test"
    if split not in SPLITS:
        raise DataError(f"{spec}: unknown testbed split {split!r}; expected one of {', '.join(SPLITS)}")
    try:
        n = int(parts[2]) if len(parts) > 2 and parts[2] else DEFAULT_N
        seed = int(parts[3]) if len(parts) > 3 and parts[3] else 0
    except ValueError:
        raise DataError(f"{spec}: N and SEED must be integers (testbed:SPLIT[:N[:SEED]])") from None
    if n < 1:
        raise DataError(f"{spec}: N must be at least 1")
    return make_problems(split, n, seed)


def problem_record(problem: Problem) -> dict:
    """The JSON-lines record written by `arbitrage testbed data`; `arbitrage run --data FILE` reads it back
    (with `--template '{question}\n\n'` to get the task's own prompt)."""
    return {
        "id": problem.id,
        "question": problem.question,
        "answer": problem.gold,
        "solution": problem.meta["solution"],
        "prompt": problem.prompt,
    }
