"""`arbitrage router build-data`: examples, author tags, labels and margin, balancing, split by problem, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arbitrage.cli import main
from arbitrage.errors import DataError
from arbitrage.router_training import build_data
from arbitrage.router_training.dataset import Example, load_examples, read_results


def step(author, text, pd, pt, draft=None, target=None, stop="separator", adv=True):
    scores = {"prm_draft": pd, "prm_target": pt}
    if adv:
        scores["advantage"] = pt - pd
    return {
        "index": 0,
        "author": author,
        "text": text,
        "stop": stop,
        "n_tokens": 3,
        "escalated": author == "target",
        "scores": scores,
        "draft": draft,
        "target": target,
        "seconds": {},
    }


def sub(text, lps=(-0.1, -0.2, -0.3), stop="separator"):
    return {"text": text, "stop": stop, "n_tokens": len(lps), "logprobs": list(lps), "entropies": [0.5] * len(lps)}


def problem(pid, steps, question=None):
    return {
        "id": pid,
        "question": question or f"question {pid}",
        "gold": "1",
        "prediction": "1",
        "correct": True,
        "steps": steps,
    }


def write(path: Path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def results(tmp_path):
    """Problem p0: draft kept (A=-0.5), then target took over (A=+0.25), then draft kept at A=0 (a tie)."""
    p0 = problem(
        "p0",
        [
            step("draft", "d one", 0.9, 0.4, draft=sub("d one")),
            step("target", "t two", 0.5, 0.75, draft=sub("d two")),
            step("draft", "d three", 0.8, 0.8, draft=sub("d three", stop="eos"), stop="eos"),
        ],
        question="What is 1+1?",
    )
    return write(tmp_path / "gen" / "results.jsonl", [p0])


def test_one_example_per_step_with_tags_advantage_and_label(results, tmp_path):
    counts = build_data([results], str(tmp_path / "d"), balance=False, val_fraction=0.0)
    assert counts["all"] == {"n": 3, "escalate": 1, "keep": 2}
    rows = [json.loads(x) for x in (tmp_path / "d" / "train.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert rows[0]["input"] == "What is 1+1?\nModel 0: d one\n\n"
    # earlier steps carry their author's tag; the draft's proposal (not the target's step) comes last
    assert rows[1]["input"] == "What is 1+1?\nModel 0: d one\n\nModel 0: d two\n\n"
    assert rows[2]["input"] == "What is 1+1?\nModel 0: d one\n\nModel 1: t two\n\nModel 0: d three\n\n"
    assert [r["advantage"] for r in rows] == pytest.approx([-0.5, 0.25, 0.0])
    assert [r["label"] for r in rows] == [0, 1, 0]  # a tie is not an escalation
    assert rows[1]["draft"]["logprobs"] == [-0.1, -0.2, -0.3]
    assert rows[2]["draft"]["stop"] == "eos"
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["draft_features"] == ["logprobs", "entropies"]


def test_no_author_tags_and_separator_from_the_run(results, tmp_path):
    (Path(results).parent / "run.json").write_text(json.dumps({"separator": "\n---\n"}))
    build_data([results], str(tmp_path / "d"), balance=False, val_fraction=0.0, author_tags=False)
    rows = [json.loads(x) for x in (tmp_path / "d" / "train.jsonl").read_text().splitlines()]
    assert rows[2]["input"] == "What is 1+1?\nd one\n---\nt two\n---\nd three\n---\n"
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["separator"] == "\n---\n" and meta["author_tags"] is False


@pytest.mark.parametrize("margin,labels", [(0.0, [0, 1, 0]), (0.3, [0, 0, 0]), (-0.1, [0, 1, 1]), (-0.6, [1, 1, 1])])
def test_margin(results, margin, labels):
    examples, _ = read_results([results], margin)
    assert [e.label for e in examples] == labels


def test_advantage_computed_when_absent_and_draft_taken_from_kept_step(tmp_path):
    p = problem("p", [step("draft", "kept", 0.2, 0.6, draft=None, adv=False)])
    examples, _ = read_results([write(tmp_path / "r.jsonl", [p])])
    assert examples[0].advantage == pytest.approx(0.4) and examples[0].label == 1
    assert examples[0].draft["text"] == "kept"


def many_problems(n_problems=20, steps_per=5, escalate_every=4):
    rows, k = [], 0
    for i in range(n_problems):
        steps = []
        for _ in range(steps_per):
            up = k % escalate_every == 0
            steps.append(
                step("target" if up else "draft", f"s{k}", 0.2 if up else 0.9, 0.9 if up else 0.5, draft=sub(f"d{k}"))
            )
            k += 1
        rows.append(problem(f"q{i}", steps))
    return rows


def test_balancing_is_seeded_downsampling_of_the_majority(tmp_path):
    res = write(tmp_path / "r.jsonl", many_problems())
    c = build_data([res], str(tmp_path / "a"), val_fraction=0.0, seed=1)
    assert c["all"] == {"n": 100, "escalate": 25, "keep": 75}
    assert c["train"] == {"n": 50, "escalate": 25, "keep": 25}
    pick = lambda d: [(e.problem_id, e.index) for e in load_examples(str(tmp_path / d / "train.jsonl"))]
    build_data([res], str(tmp_path / "b"), val_fraction=0.0, seed=1)
    build_data([res], str(tmp_path / "c"), val_fraction=0.0, seed=2)
    assert pick("a") == pick("b") != pick("c")
    assert build_data([res], str(tmp_path / "u"), val_fraction=0.0, balance=False)["train"]["n"] == 100


def test_split_by_problem(tmp_path):
    res = write(tmp_path / "r.jsonl", many_problems(n_problems=20))
    c = build_data([res], str(tmp_path / "d"), val_fraction=0.25, seed=3, balance=False)
    train = load_examples(str(tmp_path / "d" / "train.jsonl"))
    val = load_examples(str(tmp_path / "d" / "validation.jsonl"))
    assert c["problems"] == {"train": 15, "validation": 5}
    assert not {e.problem_id for e in train} & {e.problem_id for e in val}
    assert all(len([e for e in val if e.problem_id == p]) == 5 for p in {e.problem_id for e in val})
    # the validation split keeps its natural class mix even when the training split is balanced
    c2 = build_data([res], str(tmp_path / "b"), val_fraction=0.25, seed=3)
    assert c2["validation"] == c["validation"] and c2["train"]["escalate"] == c2["train"]["keep"]


def test_round_trip_of_examples(results, tmp_path):
    build_data([results], str(tmp_path / "d"), balance=False, val_fraction=0.0)
    ex = load_examples(str(tmp_path / "d" / "train.jsonl"))[2]
    assert isinstance(ex, Example) and [s.author for s in ex.steps()] == ["draft", "target"]
    d = ex.draft_step()
    assert d.author == "draft" and d.text == "d three" and d.stop == "eos" and d.extras["entropies"] == [0.5] * 3


@pytest.mark.parametrize(
    "bad,where,field",
    [
        (
            problem(
                "x", [step("draft", "a", 0.1, 0.2), {"author": "target", "text": "b", "scores": {"prm_draft": 0.1}}]
            ),
            2,
            "steps[1].scores",
        ),
        (problem("x", [step("robot", "a", 0.1, 0.2)]), 2, "steps[0].author"),
        (problem("x", [step("target", "a", 0.1, 0.2, draft=None)]), 2, "steps[0].draft"),
        (
            problem("x", [step("draft", "a", 0.1, 0.2, draft={"text": "a", "logprobs": ["x"]})]),
            2,
            "steps[0].draft.logprobs",
        ),
        ({"id": "x", "steps": []}, 2, "question"),
        ("{not json", 2, "(line)"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, bad, where, field):
    good = problem("ok", [step("draft", "a", 0.1, 0.2, draft=sub("a"))])
    path = write(tmp_path / "r.jsonl", [good, bad])
    with pytest.raises(DataError) as e:
        build_data([path], str(tmp_path / "d"))
    assert f"{path}:{where}: {field}" in str(e.value)


def test_missing_file_and_one_class_data(tmp_path, capsys):
    assert main(["router", "build-data", str(tmp_path / "nope"), "--out", str(tmp_path / "d")]) == 2
    assert "no such results file" in capsys.readouterr().err
    path = write(tmp_path / "r.jsonl", [problem("a", [step("draft", "a", 0.9, 0.1, draft=sub("a"))])])
    assert main(["router", "build-data", path, "--out", str(tmp_path / "d"), "--val-fraction", "0"]) == 0
    assert (
        main(["router", "train", "--kind", "probe", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")]) == 2
    )
    assert "one class only" in capsys.readouterr().err


def test_cli_prints_class_counts(tmp_path, capsys):
    res = write(tmp_path / "r.jsonl", many_problems())
    assert main(["router", "build-data", res, "--out", str(tmp_path / "d"), "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "train_before_balance" in out and "validation" in out
    line = next(x for x in out.splitlines() if x.startswith("all "))
    assert line.split()[1:4] == ["100", "25", "75"]
