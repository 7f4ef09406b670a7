"""Grading: boxed extraction, gold normalisation, math-verify equivalence in a worker, hard timeouts."""

from __future__ import annotations

import time

import pytest

from arbitrage.grading import Grader, GradeResult, _debug_grade, extract_boxed, gold_answer


@pytest.fixture(scope="module")
def grader():
    with Grader(timeout=10.0) as g:  # generous: the test machine may be busy; hangs are tested separately
        yield g


# ---------------------------------------------------------------- extraction and gold normalisation


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{5}.", "5"),
        (r"\boxed{1} first, then \boxed{\frac{2}{3}}", r"\frac{2}{3}"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
        (r"The answer is \boxed 7.", "7"),
        (r"\fbox{12}", "12"),
        (r"\boxed {3}", "3"),
        (r"\boxed{}", ""),
        (r"\boxed{\frac{1}{2}", None),  # cut off mid-answer
        ("no box here", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "raw, dataset, expected",
    [
        ("She makes 9 * 2 = $18.\n#### 18", "gsm8k", "18"),
        ("So 1,000 + 234 = 1,234\n#### 1,234", None, "1234"),
        (["$69$,$84$"], "olympiadbench", "$69$,$84$"),
        (["$2$", "$3$"], "olympiadbench", "2, 3"),
        (["$\\frac{1}{2 n+2}$"], "olympiadbench", "\\frac{1}{2 n+2}"),
        ("9 (apples)", "asdiv", "9"),
        ("14  (seats)", None, "14"),
        ("-(1/3)", "asdiv", "-(1/3)"),
        ("Mrs. Hilt", "asdiv", "Mrs. Hilt"),
        ("3 (mod 5)", None, "3 (mod 5)"),
        (43.0, "mawps", "43"),
        (1.25, None, "1.25"),
        (7, None, "7"),
        ("18.0", None, "18"),
        ("$10-4 n$", "college_math", "10-4 n"),
        ("\\frac{14}{3}", "math500", "\\frac{14}{3}"),
        (None, None, ""),
    ],
)
def test_gold_answer(raw, dataset, expected):
    assert gold_answer(raw, dataset) == expected


# ---------------------------------------------------------------- equivalence through math-verify

CASES = [
    # fractions and decimals
    (r"so \boxed{\frac12}", "0.5", True),
    (r"\boxed{\dfrac{1}{2}}", r"\frac12", True),
    (r"\boxed{1/2}", r"\frac{1}{2}", True),
    (r"\boxed{0.5}", "1/2", True),
    (r"\boxed{\frac{3}{2}}", "1.5", True),
    (r"\boxed{\frac{1}{3}}", "0.5", False),
    (r"\boxed{0.333}", r"\frac13", False),
    (r"\boxed{\frac{4}{2}}", "2", True),
    (r"\boxed{2.01}", "2", False),
    # roots, pi, degrees
    (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", True),
    (r"\boxed{\frac{1}{\sqrt2}}", r"\frac{\sqrt{2}}{2}", True),
    (r"\boxed{\sqrt{3}}", r"\sqrt{2}", False),
    (r"\boxed{2\pi}", r"\pi \cdot 2", True),
    (r"\boxed{3.14}", r"\pi", False),
    (r"\boxed{90^\circ}", "90", True),
    (r"\boxed{45}", r"45^{\circ}", True),
    # intervals: the bracket kind matters
    (r"\boxed{(1,2]}", r"\left( 1, 2 \right]", True),
    (r"\boxed{(1,2)}", "(1,2]", False),
    (r"\boxed{[1,2]}", "(1,2]", False),
    (r"\boxed{(-\infty, 3]}", r"(-\infty,3.0]", True),
    # sets and several answers: order does not matter
    (r"\boxed{\{2,1\}}", r"\{1,2\}", True),
    (r"\boxed{\{1,3\}}", r"\{1,2\}", False),
    (r"\boxed{2, 1}", "1, 2", True),
    (r"\boxed{7,5,3}", "3, 5, 7", True),
    (r"\boxed{1}", "1, 2", False),
    # tuples and matrices: order matters
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\boxed{(3,2,1)}", "(1,2,3)", False),
    (r"\boxed{\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}}", r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", True),
    (r"\boxed{\begin{pmatrix} 2 \\ 1 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", False),
    # units and percent (math-verify accepts "50" for "50\%" and the fraction 0.5 as well)
    (r"\boxed{5\text{ cm}}", "5", True),
    (r"\boxed{13 \text{ cm}}", r"12\text{ cm}", False),
    (r"\boxed{12\text{ cm}^2}", "12", True),
    (r"\boxed{50\%}", "50", True),
    (r"\boxed{0.5}", r"50\%", True),
    (r"\boxed{40\%}", r"50\%", False),
    # algebra, complex numbers, equations, bases, text
    (r"\boxed{(x+1)^2}", "x^2+2x+1", True),
    (r"\boxed{x^2+1}", "x^2+2x+1", False),
    (r"\boxed{6-5i}", "-5i + 6", True),
    (r"\boxed{x = 5}", "5", True),
    (r"\boxed{52_8}", "52_8", True),
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", True),
    (r"\boxed{Yes}", "yes", True),
    (r"\boxed{\text{No}}", "Yes", False),
    # no \boxed: math-verify's own extraction of the text
    ("The answer is 42.", "42", True),
    ("so x = 41 in the end", "42", False),
    # empty / missing answers
    ("", "42", False),
    (r"\boxed{}", "42", False),
    # dataset golds passed raw
    (r"\boxed{1{,}234}", "1,000 + 234 = 1,234\n#### 1,234", True),
    (r"\boxed{1234}", "#### 1,234", True),
    (r"\boxed{1243}", "#### 1,234", False),
    (r"\boxed{84, 69}", ["$69$,$84$"], True),
    (r"\boxed{69}", ["$69$,$84$"], False),
    (r"\boxed{2}", ["$2$"], True),
    (r"\boxed{9}", "9 (apples)", True),
    (r"\boxed{43}", 43.0, True),
    # nested braces and the LAST box
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", True),
    (r"first \boxed{1}, finally \boxed{\frac{2}{3}}", r"\frac23", True),
    (r"first \boxed{\frac{2}{3}}, finally \boxed{1}", r"\frac23", False),
]


@pytest.mark.parametrize("pred, gold, expected", CASES)
def test_equivalence(grader, pred, gold, expected):
    res = grader.grade(pred, gold)
    assert isinstance(res, GradeResult)
    assert res.correct is expected, res


def test_prediction_is_the_boxed_answer(grader):
    res = grader.grade(r"We get $x=3$, so the answer is \boxed{\frac{3}{4}}.", "0.75")
    assert (res.correct, res.prediction) == (True, r"\frac{3}{4}")
    res = grader.grade("Therefore the answer is 17.", "17")
    assert res.correct and res.prediction == "17"  # math-verify's own extraction
    res = grader.grade("", "17")
    assert (res.correct, res.prediction, res.reason) == (False, None, "no answer")


def test_grade_many(grader):
    out = grader.grade_many([(r"\boxed{2}", "2"), (r"\boxed{3}", "2"), ("nothing", "2")])
    assert [r.correct for r in out] == [True, False, False]


# ---------------------------------------------------------------- hangs and crashes never stop the run


def test_hanging_answer_times_out_and_grader_recovers():
    with Grader(timeout=1.0, _grade_fn=_debug_grade) as g:
        assert g.grade(r"\boxed{2}", "2").correct  # worker started and warm
        t0 = time.monotonic()
        res = g.grade(r"\boxed{2}", "sleep:60")  # the test hook sleeps in the worker
        elapsed = time.monotonic() - t0
        assert (res.correct, res.reason, res.prediction) == (False, "timeout", "2")
        assert elapsed < 1.0 + 5.0  # the deadline, plus killing the worker (its restart comes with the next answer)
        assert g.restarts == 1
        assert g.grade(r"\boxed{\frac{1}{2}}", "0.5").correct  # a fresh worker took over
        res = g.grade(r"\boxed{2}", "crash")  # the worker process dies mid-answer
        assert (res.correct, res.reason) == (False, "worker crashed")
        assert g.grade(r"\boxed{3}", "3").correct


def test_close_and_reuse():
    g = Grader(timeout=10.0)
    assert g.grade(r"\boxed{2}", "2").correct
    g.close()
    assert g._proc is None
    assert g.grade(r"\boxed{5}", "5").correct  # restarted lazily
    g.close()


@pytest.mark.parametrize(
    "prediction,gold,correct",
    [
        ("4.5\\times10^{33}", "4.5e33", True),  # e-notation gold: math-verify alone reads 4.5 * e * 33
        ("1e-5", "0.00001", True),
        ("0.00001", "1e-5", True),
        ("3.2 \\times 10^{-4}", "3.2e-4", True),
        ("6.02\\times 10^{23}", "6.02E+23", True),
        ("4.5\\times10^{32}", "4.5e33", False),  # and a wrong exponent stays wrong
        ("1\\,000", "1000", True),  # thin-space thousands
        ("1\\,000", "0", False),  # math-verify alone reads 1 * 000 = 0
        ("1\\;234\\;567", "1234567", True),
        ("5 m", "5 \\text{ cm}", False),  # different units: wrong
        ("5 \\text{ m}", "5 \\text{ cm}", False),
        ("5 \\text{ cm}", "5 cm", True),  # the same unit, spelled two ways
        ("5", "5 \\text{ cm}", True),  # a unit on one side only is dropped (as math-verify does)
        ("2 \\text{ meters}", "2 \\text{ meter}", True),
    ],
)
def test_numbers_and_units_math_verify_misreads(grader, prediction, gold, correct):
    result = grader.grade(f"so \\boxed{{{prediction}}}", gold)
    assert result.correct is correct, result
    assert result.prediction == prediction


def test_number_normalisation_leaves_other_text_alone():
    from arbitrage.grading import normalize_numbers, unit_of

    assert normalize_numbers("x^{2e3}") == "x^{2e3}"  # inside an exponent
    assert normalize_numbers("2e") == "2e" and normalize_numbers("e^{5}") == "e^{5}"
    assert normalize_numbers("var1e5x") == "var1e5x"
    assert normalize_numbers("1.5e3 and 2E-2") == "1.5\\times10^{3} and 2\\times10^{-2}"
    assert unit_of("5\\pi") is None and unit_of("x + 1") is None and unit_of("12") is None
    assert unit_of("9.8 \\mathrm{m/s^2}") == "m/s^2"
