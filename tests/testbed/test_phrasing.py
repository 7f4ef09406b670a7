"""The phrased testbed task: every phrasing of a step is read and judged like the plain one, wrong claims are
caught in every phrasing, the roles' styles differ as designed, and the plain task is unchanged."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from arbitrage.grading import Grader
from arbitrage.testbed.phrasing import (
    FINAL_FORMS,
    FORMS,
    MODE_P,
    PIECES,
    ROLE_STYLES,
    WORDINGS,
    Style,
    parse_step,
    render_final,
    render_op_step,
)
from arbitrage.testbed.prm import check_step
from arbitrage.testbed.task import apply_op, make_chains
from arbitrage.testbed.tokenizer import build_tokenizer

CHAINS = make_chains("test", 40, seed=3)


def phrasings(chain):
    """Every phrasing of every step of `chain`: (earlier steps as the reference writes them, step text, right?)."""
    vals = chain.values()
    plain = chain.solution_steps()
    for k, o in enumerate(chain.ops):
        y = vals[o.right] if isinstance(o.right, str) else o.right
        for form, wording in itertools.product(FORMS, WORDINGS):
            yield (
                plain[:k],
                render_op_step(form, wording, o.target, o.left, o.op, o.right, vals[o.left], y, vals[o.target]),
                True,
            )
            yield (
                plain[:k],
                render_op_step(form, wording, o.target, o.left, o.op, o.right, vals[o.left], y, vals[o.target] + 1),
                False,
            )  # a wrong result
            consistent = apply_op(o.op, vals[o.left] + 2, y)
            if form != "short" and consistent is not None:  # a wrong value substituted, computed correctly
                yield (
                    plain[:k],
                    render_op_step(form, wording, o.target, o.left, o.op, o.right, vals[o.left] + 2, y, consistent),
                    False,
                )
            if form == "reverse":  # two different results in one step
                text = render_op_step(form, wording, o.target, o.left, o.op, o.right, vals[o.left], y, vals[o.target])
                yield plain[:k], text[: text.rindex("= ") + 2] + str(vals[o.target] + 1), False
    for form in FINAL_FORMS:
        yield plain[:-1], render_final(form, chain.asked, vals[chain.asked]), True
        yield plain[:-1], render_final(form, chain.asked, vals[chain.asked] + 3), False


def test_every_phrasing_of_a_right_step_checks_and_every_wrong_one_does_not():
    n = 0
    for chain in CHAINS:
        for prior, text, right in phrasings(chain):
            ok, why = check_step(chain.question(), prior, text)
            assert ok == right, (text, why)
            n += 1
    assert n > 2000


def test_values_established_by_any_phrasing_carry_to_the_next_step():
    chain = next(c for c in CHAINS if len(c.ops) >= 2)
    vals = chain.values()
    o1, o2 = chain.ops[0], chain.ops[1]
    y1 = vals[o1.right] if isinstance(o1.right, str) else o1.right
    y2 = vals[o2.right] if isinstance(o2.right, str) else o2.right
    wrong = vals[o1.target] + 5  # a wrong first step: the next step is judged locally, from the value written
    first = render_op_step("reverse", "words", o1.target, o1.left, o1.op, o1.right, vals[o1.left], y1, wrong)
    assert not check_step(chain.question(), [], first)[0]
    if o2.left == o1.target and o2.op != "mod" and o2.right != o1.target:
        from arbitrage.testbed.task import apply_op

        nxt = render_op_step(
            "subst", "symbols", o2.target, o2.left, o2.op, o2.right, wrong, y2, apply_op(o2.op, wrong, y2)
        )
        assert check_step(chain.question(), [first], nxt)[0]


def test_naming_the_wrong_variable_or_operation_is_wrong():
    chain = CHAINS[0]
    q = chain.question()
    o = chain.ops[0]
    vals = chain.values()
    other = {"+": "-", "-": "+", "*": "+", "mod": "+"}[o.op]
    assert not check_step(q, [], f"{o.target} = {vals[o.left]} {other} 1 = 5")[0]
    assert not check_step(q, [], f"So {'a' if chain.asked != 'a' else 'b'} = \\boxed{{{chain.answer}}}")[0]
    assert parse_step(f"{o.target} = 3 plus 4 = 7") is not None
    assert parse_step(f"{o.target} = 3 plus 4 - 1 = 7") is None


def test_every_final_phrasing_grades_right():
    with Grader(timeout=10) as grader:
        for form in FINAL_FORMS:
            text = "b = 3 + 4 = 7\n\n" + render_final(form, "b", 7)
            assert grader.grade(text, "7").correct, form


def test_role_styles_differ_and_streams_draw_their_modes():
    assert ROLE_STYLES["draft"] != ROLE_STYLES["target"]
    same = [op for op in ("+", "-", "*", "mod") if ROLE_STYLES["draft"][op] == ROLE_STYLES["target"][op]]
    assert same == ["*"] and ROLE_STYLES["draft"]["final"] != ROLE_STYLES["target"]["final"]
    for role in ("draft", "target"):
        style, rng = Style(role), random.Random(0)
        draws = [style.draw_op("+", rng) for _ in range(4000)]
        share = draws.count(ROLE_STYLES[role]["+"]) / len(draws)
        assert abs(share - MODE_P) < 0.03
        assert len(set(draws)) == len(FORMS) * len(WORDINGS)  # every other phrasing is drawn too


def test_training_streams_of_the_two_roles_are_independent():
    from arbitrage.testbed.train import encode, task_tokenizer

    tok = task_tokenizer("phrased")
    chains = make_chains("train", 50, seed=0)

    def texts(role):
        rng, style = random.Random(f"phrasing/{role}/0"), Style(role)
        return [tok.decode(encode(tok, c, style, rng)[0]) for c in chains]

    d, t = texts("draft"), texts("target")
    assert sum(a == b for a, b in zip(d, t)) < 10  # the same problems, worded differently
    assert texts("draft") == d  # and seeded


def test_the_plain_tokenizer_is_unchanged_and_the_phrased_one_adds_its_pieces():
    from arbitrage.testbed.evaluate import default_models_dir

    shipped = json.loads((default_models_dir() / "draft" / "tokenizer.json").read_text())["model"]["vocab"]
    assert build_tokenizer().get_vocab() == shipped
    phrased = build_tokenizer(extra_pieces=PIECES)
    for piece in PIECES:
        assert len(phrased(piece, add_special_tokens=False)["input_ids"]) == 1, piece
    ids = phrased("c = b modulo 9 = 38 mod 9 = 2", add_special_tokens=False)["input_ids"]
    assert " modulo " in phrased.convert_ids_to_tokens(ids) and " mod " in phrased.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("role", ["draft", "target"])
def test_reference_solutions_of_a_style_check_right(role):
    style, rng = Style(role), random.Random(7)
    for chain in CHAINS:
        steps = chain.solution_steps(style, rng)
        assert all(check_step(chain.question(), steps[:k], s)[0] for k, s in enumerate(steps))
