"""An exact process reward model for the testbed task, behind the `StepScorer` protocol.

A step scores 1 when it is right in its context, else 0:
- an operation step "x = y op z = 37 op 4 = 148" must restate the question's definition of x, substitute the
  values that the question and the accepted earlier steps established for y and z, and compute correctly;
- a final step "The answer is \\boxed{N}" must box the true value of the variable the question asks for.
Every phrasing of the phrased task (`phrasing.py`) is read; what a phrasing leaves out is taken from the question.
Values come from the accepted steps as written (a wrong earlier step establishes its wrong value): the
checker judges each step locally, like a PRM that reads the step in its context.

`flip` and `sigma` make it imperfect on purpose: flip the verdict with probability `flip`, then add Gaussian
noise of std `sigma` clipped to [0, 1]. The noise is a deterministic function of (seed, question, earlier
steps, candidate), so the same input always gets the same score, as from a real model.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from functools import lru_cache

from ..types import ScoreRequest, Step
from .phrasing import parse_final, parse_step
from .task import Chain, apply_op, parse_question


@lru_cache(maxsize=4096)
def _chain(question: str) -> Chain:
    return parse_question(question)


def established_values(chain: Chain, steps: Sequence[str]) -> dict[str, int]:
    """The question's constant, then each earlier step's stated result (the last one wins), in any phrasing."""
    vals = {chain.start[0]: chain.start[1]}
    for text in steps:
        claim = parse_step(text)
        if claim:
            vals[claim.target] = claim.result
    return vals


def check_step(question: str, steps: Sequence[str], candidate: str) -> tuple[bool, str]:
    """Whether `candidate` is a correct next step after `steps`, with the reason when it is not. Every
    phrasing of `phrasing.py` is read; what a phrasing leaves out (names, or the substituted values) is taken
    from the question's definition and the values established so far."""
    try:
        chain = _chain(question)
    except ValueError as exc:
        return False, str(exc)
    final = parse_final(candidate)
    if final:
        named, boxed = final
        if named is not None and named != chain.asked:
            return False, f"boxed the value of {named}, the question asks for {chain.asked}"
        ok = boxed == str(chain.answer)
        return ok, "" if ok else f"boxed {boxed!r}, the answer is {chain.answer}"
    claim = parse_step(candidate)
    if claim is None:
        return False, "not a step of the task's form"
    definition = {o.target: o for o in chain.ops}.get(claim.target)
    if definition is None:
        return False, f"{claim.target} is not defined in the question"
    if (
        claim.op != definition.op
        or claim.left not in (None, definition.left)
        or claim.right not in (None, definition.right)
    ):
        stated = f"{claim.target} = {claim.left or '?'} {claim.op} {claim.right if claim.right is not None else '?'}"
        return False, f"{stated!r} is not the question's {definition.definition()!r}"
    vals = established_values(chain, steps)
    expected = []
    for name in (definition.left, definition.right):
        if isinstance(name, int):
            expected.append(name)
        elif name not in vals:
            return False, f"{name} has no value yet"
        else:
            expected.append(vals[name])
    if claim.x is not None:
        assert claim.y is not None  # parse_step reads the two operands' values together
        for name, used, want in ((definition.left, claim.x, expected[0]), (definition.right, claim.y, expected[1])):
            if used != want:
                what = f"the literal {name}" if isinstance(name, int) else f"{name} = {want}"
                return False, f"used {used} for {what}"
        if apply_op(claim.op, claim.x, claim.y) != claim.result:
            return False, f"{claim.x} {claim.op} {claim.y} is not {claim.result}"
        return True, ""
    right_value = apply_op(claim.op, expected[0], expected[1])
    if right_value != claim.result:
        return False, f"{definition.definition()} is {right_value}, not {claim.result}"
    return True, ""


class ArithmeticCheckerPRM:
    """`StepScorer` for the testbed: exact verdicts, optionally made noisy (see the module docstring)."""

    def __init__(self, flip: float = 0.0, sigma: float = 0.0, seed: int = 0, name: str = "arithmetic-checker"):
        if not 0.0 <= flip <= 1.0 or sigma < 0.0:
            raise ValueError("flip must be in [0, 1] and sigma >= 0")
        self.flip, self.sigma, self.seed, self.name = flip, sigma, seed, name

    @classmethod
    def from_spec(cls, spec: str, seed: int = 0) -> ArithmeticCheckerPRM:
        """`testbed-checker[:FLIP[:SIGMA]]`, as `--prm` of `arbitrage run`."""
        from ..errors import ConfigError

        name, *rest = spec.split(":")
        if name != "testbed-checker" or len(rest) > 2:
            raise ConfigError(f"--prm {spec!r}: expected testbed-checker[:FLIP[:SIGMA]], e.g. testbed-checker:0.1:0.2")
        try:
            flip, sigma = (float(x) if x else 0.0 for x in (rest + ["", ""])[:2])
        except ValueError:
            raise ConfigError(f"--prm {spec!r}: FLIP and SIGMA must be numbers") from None
        try:
            return cls(flip=flip, sigma=sigma, seed=seed, name=spec)
        except ValueError as exc:
            raise ConfigError(f"--prm {spec!r}: {exc}") from None

    def score_text(self, question: str, steps: Sequence[str], candidate: str) -> float:
        score = 1.0 if check_step(question, steps, candidate)[0] else 0.0
        if self.flip == 0.0 and self.sigma == 0.0:
            return score
        h = hashlib.sha256("\x1f".join([str(self.seed), question, *steps, "\x1e", candidate]).encode()).digest()
        rng = random.Random(h)
        if rng.random() < self.flip:
            score = 1.0 - score
        if self.sigma:
            score = min(1.0, max(0.0, score + rng.gauss(0.0, self.sigma)))
        return score

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        out = []
        for req in requests:
            prior = [s.text for s in req.steps]
            out.append([self.score_text(req.question, prior, c.text) for c in req.candidates])
        return out

    def release(self, key: str) -> None:
        """Nothing is kept per problem."""


def score_steps(prm: ArithmeticCheckerPRM, question: str, steps: Sequence[str | Step]) -> list[float]:
    """The score of each step of a whole solution, each in the context of the ones before it."""
    texts = [s.text if isinstance(s, Step) else s for s in steps]
    return [prm.score_text(question, texts[:i], t) for i, t in enumerate(texts)]
