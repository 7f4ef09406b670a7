"""Testbed task, checker PRM, data source and PRM spec: references grade right, the checker accepts reference
steps and rejects corrupted ones, splits are disjoint, `testbed:` data and `testbed-checker:` PRM specs work."""

from __future__ import annotations

import random

import pytest

from arbitrage.data import load_problems
from arbitrage.errors import ConfigError, DataError
from arbitrage.factory import ModelOptions, load_model
from arbitrage.grading import Grader
from arbitrage.testbed.prm import ArithmeticCheckerPRM, check_step, score_steps
from arbitrage.testbed.task import (
    MAX_VALUE,
    SEPARATOR,
    SPLITS,
    apply_op,
    extract_answer,
    make_chains,
    make_problems,
    parse_question,
    split_of,
)
from arbitrage.types import ScoreRequest, Step


def test_reference_solutions_grade_correct_through_math_verify():
    problems = [p for s in SPLITS for p in make_problems(s, 25, seed=3)]
    with Grader(timeout=10.0) as g:
        for p in problems:
            res = g.grade(p.meta["solution"], p.gold)
            assert res.correct, (p.id, p.meta["solution"], p.gold, res)
        wrong = (
            problems[0]
            .meta["solution"]
            .replace("{" + problems[0].gold + "}", "{" + str(int(problems[0].gold) + 1) + "}")
        )
        assert not g.grade(wrong, problems[0].gold).correct


def test_generator_is_seeded_in_range_and_parses_back():
    a, b = make_chains("train", 50, seed=7), make_chains("train", 50, seed=7)
    assert [c.question() for c in a] == [c.question() for c in b]
    assert [c.question() for c in a] != [c.question() for c in make_chains("train", 50, seed=8)]
    assert [c.question() for c in make_chains("train", 20, seed=7)] == [c.question() for c in a[:20]]
    for c in a:
        assert all(0 <= v <= MAX_VALUE for v in c.values().values())
        assert parse_question(c.question()) == c
        steps = c.solution_steps()
        assert extract_answer(steps[-1]) == str(c.answer) and all(SEPARATOR not in s for s in steps)
    kinds = {o.kind for c in make_chains("train", 400, 0) for o in c.ops}
    assert {"+1d", "-1d", "*1d", "var+var"} <= kinds and any(k.startswith("mod") for k in kinds)


def test_splits_are_disjoint_and_follow_the_question_hash():
    questions = {s: {c.question() for c in make_chains(s, 300 if s == "train" else 100, seed=0)} for s in SPLITS}
    assert not questions["train"] & questions["validation"]
    assert not questions["train"] & questions["test"]
    assert not questions["validation"] & questions["test"]
    for s, qs in questions.items():
        assert all(split_of(q) == s for q in qs)
    other_seed = {c.question() for c in make_chains("test", 100, seed=1)}
    assert not other_seed & questions["train"]


def test_checker_accepts_every_reference_step():
    for c in make_chains("test", 100, seed=0):
        steps = c.solution_steps()
        for k, step in enumerate(steps):
            ok, why = check_step(c.question(), steps[:k], step)
            assert ok, (c.question(), steps[:k], step, why)


def _corruptions(step: str, chain, k: int) -> dict[str, str]:
    """Ways to spoil operation step `k` ("x = y op z = X op Z = R")."""
    lhs, symbolic, numeric, result = (
        step.split(" = ")[0],
        step.split(" = ")[1],
        step.split(" = ")[2],
        step.split(" = ")[3],
    )
    op = chain.ops[k]
    other_op = {"+": "-", "-": "+", "*": "+", "mod": "+"}[op.op]
    x, y = numeric.split(f" {op.op} ")
    return {
        "wrong result": f"{lhs} = {symbolic} = {numeric} = {int(result) + 1}",
        "wrong substituted value": f"{lhs} = {symbolic} = {int(x) + 1} {op.op} {y} = {result}",
        "definition not in the question": f"{lhs} = {symbolic.replace(f' {op.op} ', f' {other_op} ')} = "
        f"{x} {other_op} {y} = {result}",
        "wrong variable": f"{'z'} = {symbolic} = {numeric} = {result}",
        "not the task's form": f"{lhs} is {result}",
        "empty": "",
        "truncated": step[: len(step) // 2],
    }


def test_checker_rejects_corrupted_steps():
    rejected = 0
    for c in make_chains("test", 40, seed=0):
        steps = c.solution_steps()
        for k, step in enumerate(steps[:-1]):
            for kind, bad in _corruptions(step, c, k).items():
                ok, why = check_step(c.question(), steps[:k], bad)
                assert not ok, (kind, c.question(), bad)
                assert why
                rejected += 1
        answer = int(c.answer)
        assert not check_step(c.question(), steps[:-1], f"The answer is \\boxed{{{answer + 1}}}")[0]
        assert not check_step(c.question(), steps[:-1], f"The answer is {answer}")[0]
    assert rejected > 500


def test_checker_judges_in_context_and_uses_values_as_written():
    c = next(c for c in make_chains("test", 200, seed=0) if len(c.ops) >= 2)
    steps = c.solution_steps()
    # the second step before the first one: its variable has no value yet
    assert not check_step(c.question(), [], steps[1])[0]
    # a wrong first step establishes its wrong value: the next step is judged on what was written
    first = steps[0].rsplit(" = ", 1)
    wrong_first = f"{first[0]} = {int(first[1]) + 1}"
    assert not check_step(c.question(), [], wrong_first)[0]
    assert c.ops[1].left == c.ops[0].target  # a chain: the second step works on the first one's value
    assert not check_step(c.question(), [wrong_first], steps[1])[0]  # it used the true value, not the written one
    o, vals = c.ops[1], c.values()
    written = vals[c.ops[0].target] + 1
    y = vals[o.right] if isinstance(o.right, str) else o.right
    follows = f"{o.definition()} = {written} {o.op} {y} = {apply_op(o.op, written, y)}"
    assert check_step(c.question(), [wrong_first], follows) == (True, "")  # computed right from what was written
    assert not check_step("What is 2 + 2?", [], "x = 4")[0]


def test_prm_noise_is_bounded_deterministic_and_off_by_default():
    c = make_chains("test", 1, seed=0)[0]
    steps = c.solution_steps()
    exact = ArithmeticCheckerPRM()
    assert score_steps(exact, c.question(), steps) == [1.0] * len(steps)
    flipped = ArithmeticCheckerPRM(flip=1.0)
    assert score_steps(flipped, c.question(), steps) == [0.0] * len(steps)
    noisy = ArithmeticCheckerPRM(flip=0.2, sigma=0.3, seed=1)
    many = [s for ch in make_chains("test", 30, seed=0) for s in score_steps(noisy, ch.question(), ch.solution_steps())]
    assert all(0.0 <= s <= 1.0 for s in many) and len(set(many)) > 10
    assert many == [
        s
        for ch in make_chains("test", 30, seed=0)
        for s in score_steps(ArithmeticCheckerPRM(flip=0.2, sigma=0.3, seed=1), ch.question(), ch.solution_steps())
    ]
    req = ScoreRequest(
        "k", c.question(), [], [Step("draft", steps[0], "separator", 5), Step("target", "nonsense", "separator", 2)]
    )
    assert exact.score([req]) == [[1.0, 0.0]]
    with pytest.raises(ValueError):
        ArithmeticCheckerPRM(flip=1.5)


def test_prm_spec_through_the_factory():
    prm = load_model("prm", "testbed-checker", "prm", ModelOptions())
    assert (prm.flip, prm.sigma) == (0.0, 0.0)
    prm = load_model("prm", "testbed-checker:0.1:0.2", "prm", ModelOptions(seed=4))
    assert (prm.flip, prm.sigma, prm.seed) == (0.1, 0.2, 4)
    assert load_model("prm", "testbed-checker:0.3", "prm", ModelOptions()).flip == 0.3
    for bad in (
        "testbed-checker:x",
        "testbed-checker:2",
        "testbed-checker:0.1:-1",
        "testbed-checker:1:2:3",
        "testbed-checkers",
    ):
        with pytest.raises(ConfigError, match="testbed-checker"):
            load_model("prm", bad, "prm", ModelOptions())


def test_testbed_data_source():
    ps = load_problems("testbed:test:30")
    assert len(ps) == 30 and len({p.id for p in ps}) == 30
    assert all(p.prompt == p.question + "\n\n" and p.gold == str(parse_question(p.question).answer) for p in ps)
    assert [p.id for p in load_problems("testbed:test:30", limit=5, offset=10)] == [p.id for p in ps[10:15]]
    assert load_problems("testbed:test:30", template="plain")[0].prompt == ps[0].prompt  # the task's own prompt
    assert len(load_problems("testbed:validation")) == 200
    assert load_problems("testbed:train:5:1")[0].question != load_problems("testbed:train:5:0")[0].question
    for bad in ("testbed:dev", "testbed:test:x", "testbed:test:0", "testbed:test:5:1:2"):
        with pytest.raises(DataError, match="testbed"):
            load_problems(bad)


def test_random_corruption_fuzz_never_accepted_unless_equivalent():
    """Random character edits of reference steps: whatever the checker accepts must still be arithmetically
    right (it may only accept an edit that leaves the step's meaning intact, e.g. none)."""
    rng = random.Random(0)
    for c in make_chains("test", 60, seed=5):
        steps = c.solution_steps()
        for k, step in enumerate(steps[:-1]):
            i = rng.randrange(len(step))
            bad = step[:i] + rng.choice("0123456789+-*abz ") + step[i + 1 :]
            if bad != step and check_step(c.question(), steps[:k], bad)[0]:
                assert bad.split(" = ")[0] == step.split(" = ")[0]
                assert bad.split(" = ")[-1] == step.split(" = ")[-1]
