"""`arbitrage run` end to end on tiny local models: outputs, metrics, resume after SIGKILL, and clear errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from arbitrage.cli import main

QUESTIONS = [
    ("What is 3 + 4?", "7"),
    ("What is 2 * 6?", "12"),
    ("Compute 1/2 + 1/3.", "\\frac{5}{6}"),
    ("What is 10 - 3?", "7"),
    ("What is 9 * 9?", "81"),
    ("What is 100 / 4?", "25"),
]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps({"uid": f"t{i}", "q": q, "a": a}) + "\n" for i, (q, a) in enumerate(QUESTIONS)))
    return path


def base_args(tiny_dir, data_file, out, policy="rsd", *extra):
    return [
        "run",
        "--policy",
        policy,
        "--draft",
        str(tiny_dir / "draft"),
        "--target",
        str(tiny_dir / "target"),
        "--prm",
        str(tiny_dir / "prm"),
        "--router",
        str(tiny_dir / "router"),
        "--data",
        str(data_file),
        "--question-field",
        "q",
        "--answer-field",
        "a",
        "--id-field",
        "uid",
        "--out",
        str(out),
        "--max-steps",
        "4",
        "--max-step-tokens",
        "10",
        "--quiet",
        "--threads",
        "1",
        *extra,
    ]


def test_run_writes_results_and_metrics(tiny_dir, data_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(base_args(tiny_dir, data_file, out, "rsd", "--threshold", "0.6")) == 0
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == [f"t{i}" for i in range(6)]
    for r in lines:
        assert {"id", "prediction", "gold", "correct", "steps", "latency_s", "finish"} <= set(r)
        for s in r["steps"]:
            assert {"author", "text", "n_tokens", "scores", "seconds", "escalated"} <= set(s)
            assert 0.0 <= s["scores"]["prm_draft"] <= 1.0
            assert s["escalated"] == (s["scores"]["prm_draft"] < 0.6)
    m = json.loads((out / "metrics.json").read_text())
    for key in (
        "policy",
        "threshold",
        "n",
        "accuracy",
        "escalation_rate",
        "draft_tokens_accepted",
        "draft_tokens_discarded",
        "target_tokens",
        "target_calls",
        "latency_s_mean",
        "latency_s_p50",
        "draft_s",
        "target_s",
        "prm_s",
        "router_s",
    ):
        assert key in m, key
    assert m["n"] == 6 and m["policy"] == "rsd" and m["threshold"] == 0.6
    steps = sum(len(r["steps"]) for r in lines)
    assert m["escalation_rate"] == pytest.approx(sum(s["escalated"] for r in lines for s in r["steps"]) / steps)
    assert m["target_calls"] == sum(s["escalated"] for r in lines for s in r["steps"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 6


def test_router_policy_runs_with_a_router(tiny_dir, data_file, tmp_path):
    out = tmp_path / "router"
    assert main(base_args(tiny_dir, data_file, out, "router", "--threshold", "0.5", "--limit", "2")) == 0
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert all("router" in s["scores"] for r in lines for s in r["steps"])


def test_rerun_resumes_and_other_settings_are_refused(tiny_dir, data_file, tmp_path, capsys):
    out = tmp_path / "resume"
    assert main(base_args(tiny_dir, data_file, out, "draft", "--limit", "3")) == 0
    first = (out / "results.jsonl").read_text()
    assert main(base_args(tiny_dir, data_file, out, "draft")) == 0  # the limit may grow: 3 more problems
    text = (out / "results.jsonl").read_text()
    assert text.startswith(first) and len(text.splitlines()) == 6
    assert main(base_args(tiny_dir, data_file, out, "draft", "--temperature", "0.7")) == 2
    assert "other settings" in capsys.readouterr().err


def test_sigkilled_run_resumes_with_every_problem_exactly_once(tiny_dir, data_file, tmp_path):
    """The draft is a fake server taking 0.3 s a step, so the run lasts seconds and the kill lands mid-run
    (with tiny in-process models every problem could finish in one burst before the kill)."""
    from arbitrage.server.running import serving
    from arbitrage.testing.fake_server import make_app

    out = tmp_path / "killed"
    with serving(make_app("slow-draft", per_token_s=0.1, tokens_per_step=3, steps=2)) as server:
        args = base_args(tiny_dir, data_file, out, "draft", "--concurrency", "1")
        args[args.index("--draft") + 1] = server.url + "/v1"
        cmd = [sys.executable, "-m", "arbitrage.cli", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        results = out / "results.jsonl"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if results.exists() and len(results.read_text().splitlines()) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = results.read_text().splitlines()
        assert 2 <= len(before) < 6
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    after = [json.loads(x) for x in results.read_text().splitlines()]
    assert sorted(r["id"] for r in after) == [f"t{i}" for i in range(6)]  # each exactly once
    assert [json.dumps(r) for r in after[: len(before)]] == [json.dumps(json.loads(x)) for x in before]
    assert json.loads((out / "metrics.json").read_text())["n"] == 6


def test_torn_last_line_is_dropped_and_rerun(tiny_dir, data_file, tmp_path):
    out = tmp_path / "torn"
    assert main(base_args(tiny_dir, data_file, out, "draft", "--limit", "2")) == 0
    path = out / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][:20])  # killed in the middle of writing the second line
    assert main(base_args(tiny_dir, data_file, out, "draft", "--limit", "2")) == 0
    assert sorted(json.loads(x)["id"] for x in path.read_text().splitlines()) == ["t0", "t1"]


def test_a_corrupt_line_in_the_middle_is_an_error_not_dropped(tmp_path):
    from arbitrage.errors import DataError
    from arbitrage.results import ResultsFile

    path = tmp_path / "results.jsonl"
    good = [json.dumps({"id": f"t{i}", "correct": True}) + "\n" for i in range(3)]
    text = good[0] + '{"id": "t1", "corr' + "\n" + good[2]  # a bad line with a good one after it
    path.write_text(text)
    with pytest.raises(DataError, match=r"results\.jsonl:2: not a JSON results line"):
        ResultsFile(str(tmp_path)).load()
    assert path.read_text() == text  # nothing was cut away
    path.write_text(good[0] + good[1] + good[2][:9])  # only the last line is torn: that one is dropped
    assert [r["id"] for r in ResultsFile(str(tmp_path)).load()] == ["t0", "t1"]


@pytest.mark.parametrize(
    "change,message",
    [
        (["--draft", "/no/such/model"], "'/no/such/model' does not exist"),
        (["--policy", "router", "--router", ""], "needs --router"),
        (["--threshold", "1.5"], "out of range"),
        (["--policy", "draft", "--threshold", "0.5"], "takes no --threshold"),
        (["--question-field", "question_text"], "question_text"),
        (["--max-steps", "0"], "--max-steps"),
    ],
)
def test_clear_one_line_errors(tiny_dir, data_file, tmp_path, capsys, change, message):
    args = base_args(tiny_dir, data_file, tmp_path / "err", "rsd")
    for i in range(0, len(change), 2):
        flag, value = change[i], change[i + 1]
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("arbitrage: error:") and message in err[0], err


def test_missing_field_error_names_file_and_line(tiny_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"q": "1+1?", "a": "2"}) + "\n" + json.dumps({"q": "2+2?"}) + "\n")
    args = base_args(tiny_dir, bad, tmp_path / "err2", "draft")
    args[args.index("--id-field") : args.index("--id-field") + 2] = []
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl: line 2: missing answer field 'a'" in err
