"""Nothing silently wrong: one run per output directory (an OS lock that a SIGKILL does not leave behind), routers
validated before any problem runs, a data file's own prompts and ids kept, a failed start that does not block
its fix, every result-changing setting checked on resume, and fast, clear failures."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from arbitrage.cli import main
from arbitrage.engine import EngineConfig
from arbitrage.errors import ConfigError, ModelLoadError
from arbitrage.factory import ModelOptions
from arbitrage.results import check_manifest, record_session
from arbitrage.run import RunConfig
from arbitrage.server.running import serving
from arbitrage.testing.fake_server import make_app


def toy_data(path, n=6):
    path.write_text(
        "".join(json.dumps({"uid": f"t{i}", "q": f"What is {i} + {i}?", "a": str(2 * i)}) + "\n" for i in range(n))
    )
    return path


def run_args(out, data, draft, *extra):
    return [
        "run",
        "--policy",
        "draft",
        "--draft",
        draft,
        "--data",
        str(data),
        "--question-field",
        "q",
        "--answer-field",
        "a",
        "--id-field",
        "uid",
        "--out",
        str(out),
        "--quiet",
        "--concurrency",
        "1",
        *extra,
    ]


def test_two_runs_on_one_directory_the_second_is_refused_and_a_killed_run_leaves_no_lock(tmp_path):
    data = toy_data(tmp_path / "d.jsonl")
    out = tmp_path / "out"
    with serving(make_app("slow", per_token_s=0.1, tokens_per_step=3, steps=2)) as server:
        cmd = [sys.executable, "-m", "arbitrage.cli", *run_args(out, data, server.url + "/v1")]
        first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while not (out / "run.json").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert first.poll() is None, first.stderr.read().decode()
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "being written by another arbitrage run" in second.stderr
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # no stale lock after SIGKILL
        assert again.returncode == 0, again.stderr
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == [f"t{i}" for i in range(6)]  # each problem exactly once
    assert json.loads((out / "metrics.json").read_text())["n"] == 6


def test_duplicate_lines_are_an_error_not_a_count(tmp_path, tiny_dir, capsys):
    data = toy_data(tmp_path / "d.jsonl", 2)
    out = tmp_path / "dup"
    assert main(run_args(out, data, str(tiny_dir / "draft"), "--max-steps", "2", "--max-step-tokens", "4")) == 0
    path = out / "results.jsonl"
    path.write_text(path.read_text() * 2)  # what two unlocked runs on one directory used to leave
    assert main(run_args(out, data, str(tiny_dir / "draft"), "--max-steps", "2", "--max-step-tokens", "4")) == 2
    assert "recorded more than once" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["causal LM", "folder", "untrained head"])
def test_a_directory_that_is_not_a_trained_router_is_refused_before_any_problem(tmp_path, tiny_dir, capsys, what):
    import shutil

    if what == "causal LM":
        router = str(tiny_dir / "target")  # a model directory without arbitrage_router.json
        message = "is not a router"
    elif what == "folder":
        router = str(tmp_path)  # e.g. a demo output folder
        message = "is not a router"
    else:  # the meta file next to a checkpoint whose classification head transformers would initialise at random
        router = str(tmp_path / "fake-router")
        shutil.copytree(tiny_dir / "target", router)
        shutil.copy(tiny_dir / "router" / "arbitrage_router.json", router)
        message = "no trained router head"
    data = toy_data(tmp_path / "d.jsonl", 2)
    out = tmp_path / "out"
    rc = main(
        [
            "run",
            "--policy",
            "router",
            "--draft",
            str(tiny_dir / "draft"),
            "--target",
            str(tiny_dir / "target"),
            "--router",
            router,
            "--data",
            str(data),
            "--question-field",
            "q",
            "--answer-field",
            "a",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not err[0].endswith(": "), err
    assert not (out / "results.jsonl").exists() and not (out / "run.json").exists()


def test_a_data_files_own_prompt_and_id_are_used(tmp_path, capsys):
    from arbitrage.data import load_problems

    path = tmp_path / "own.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"x{i}", "question": f"q{i}", "answer": str(i), "prompt": f"PROMPT {i}:\n\n"}) + "\n"
            for i in range(3)
        )
    )
    probs = load_problems(str(path))
    assert [p.id for p in probs] == ["x0", "x1", "x2"]
    assert [p.prompt for p in probs] == [f"PROMPT {i}:\n\n" for i in range(3)]
    probs = load_problems(str(path), template="plain")  # an explicit template wins, loudly
    assert probs[0].prompt.startswith("q0\n") and "replaces them" in capsys.readouterr().err


def test_a_testbed_data_file_scores_as_the_testbed_spec(tmp_path):
    """`arbitrage testbed data` writes a file; run on it, the target scores exactly as on `testbed:test:N`
    (before, the file's prompts were replaced by a chat template and the target scored near zero)."""
    path = tmp_path / "tb.jsonl"
    assert main(["testbed", "data", "--n", "12", "--out", str(path)]) == 0
    common = ["run", "--policy", "target", "--target", "testbed:target", "--quiet", "--max-steps", "8"]
    assert main([*common, "--data", str(path), "--out", str(tmp_path / "file")]) == 0
    assert main([*common, "--data", "testbed:test:12", "--out", str(tmp_path / "spec")]) == 0
    a = [json.loads(x) for x in (tmp_path / "file" / "results.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "spec" / "results.jsonl").read_text().splitlines()]
    assert [(r["id"], r["solution"], r["correct"]) for r in a] == [(r["id"], r["solution"], r["correct"]) for r in b]
    assert sum(r["correct"] for r in a) > 0


def test_a_failed_start_does_not_block_the_corrected_command(tmp_path, tiny_dir):
    data = toy_data(tmp_path / "d.jsonl", 2)
    out = tmp_path / "out"
    assert main(run_args(out, data, "http://127.0.0.1:9/v1")) == 2  # nothing listens there
    assert not (out / "run.json").exists()
    assert main(run_args(out, data, str(tiny_dir / "draft"), "--max-steps", "2", "--max-step-tokens", "4")) == 0
    assert json.loads((out / "metrics.json").read_text())["n"] == 2


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, dict):
        return {**value, "draft": "other"}
    if value is None:
        return "something"
    raise AssertionError(f"no change for {value!r}")


def test_every_result_changing_setting_is_checked_on_resume(tmp_path):
    """Each field of the run's config, changed alone: refused (naming it) unless it only picks problems or
    changes speed. The list follows from the config's fields, so a new field is checked by default."""
    base = RunConfig(
        policy="rsd", out=str(tmp_path), data="d.jsonl", threshold=0.5, models={"draft": "d", "target": "t", "prm": "p"}
    )
    record_session(str(tmp_path), base.settings(), base.speed_settings(), 1)
    checked = []
    for section, obj in (("run", base), ("engine", base.engine), ("model_options", base.model_options)):
        for f in dataclasses.fields(obj):
            if section == "run" and f.name in ("engine", "model_options"):
                continue
            value = _changed(getattr(obj, f.name))
            if section == "run":
                cfg = dataclasses.replace(base, **{f.name: value})
            elif section == "engine":
                cfg = dataclasses.replace(base, engine=dataclasses.replace(base.engine, **{f.name: value}))
            else:
                cfg = dataclasses.replace(
                    base, model_options=dataclasses.replace(base.model_options, **{f.name: value})
                )
            free = (
                f.name in RunConfig.FREE or f.name in RunConfig.SPEED_ONLY or f.name in RunConfig.SPEED_ONLY_WHEN_GREEDY
            )  # base decodes greedily
            if free:
                check_manifest(str(tmp_path), cfg.settings())  # accepted
            else:
                with pytest.raises(ConfigError, match=f"({f.name}|models)"):
                    check_manifest(str(tmp_path), cfg.settings())
                checked.append(f.name)
    for name in (
        "threshold",
        "dtype",
        "server_api",
        "pooling_route",
        "return_hidden",
        "temperature",
        "separator",
        "max_steps",
        "template",
        "policy_options",
        "reuse_cache",
        "shard",
    ):
        assert name in checked, name
    # each session records every speed setting
    assert set(base.speed_settings()) == RunConfig.SPEED_ONLY | RunConfig.SPEED_ONLY_WHEN_GREEDY


def test_reusing_the_draft_may_change_on_resume_only_when_greedy(tmp_path):
    """Verification gives the target's own greedy steps (speed only), but other samples when sampling."""
    for temperature, allowed in ((0.0, True), (0.7, False)):
        out = tmp_path / f"t{temperature}"
        base = RunConfig(
            policy="rsd",
            out=str(out),
            data="d.jsonl",
            threshold=0.5,
            models={"draft": "d", "target": "t", "prm": "p"},
            model_options=ModelOptions(temperature=temperature),
        )
        record_session(str(out), base.settings(), base.speed_settings(), 1)
        for change in ({"verify": False}, {"gamma": 0}):
            cfg = dataclasses.replace(base, engine=dataclasses.replace(base.engine, **change))
            if allowed:
                check_manifest(str(out), cfg.settings())
            else:
                with pytest.raises(ConfigError, match=next(iter(change))):
                    check_manifest(str(out), cfg.settings())


def test_speed_only_settings_may_change_and_metrics_say_so(tmp_path, tiny_dir, capsys):
    data = toy_data(tmp_path / "d.jsonl", 3)
    out = tmp_path / "out"
    args = run_args(out, data, str(tiny_dir / "draft"), "--max-steps", "2", "--max-step-tokens", "4")
    assert main([*args, "--limit", "1"]) == 0
    args[args.index("--concurrency") + 1] = "2"
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 3 and "not comparable" in m["note"]
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert [s["concurrency"] for s in sessions] == [1, 2]


def test_offset_past_the_end_is_an_error(tmp_path, tiny_dir, capsys):
    data = toy_data(tmp_path / "d.jsonl", 3)
    assert main(run_args(tmp_path / "o", data, str(tiny_dir / "draft"), "--offset", "5")) == 2
    assert "selects no problem" in capsys.readouterr().err


def test_threads_default_follows_the_machine(capsys):
    from arbitrage.cli_args import auto_threads

    assert auto_threads(2) == 1 and auto_threads(4) == 1 and auto_threads(16) == 8
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "chosen from this machine" in " ".join(capsys.readouterr().out.split())


def test_an_unreachable_hub_fails_at_once_and_says_what_to_do(monkeypatch):
    from arbitrage.backends import hf, hub

    monkeypatch.setattr(hub, "_hub_reachable", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.time()
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        hf.load_tokenizer("some-org/not-cached-model")
    assert time.time() - t0 < 5


def test_engine_defaults_are_what_the_cli_shows():
    from arbitrage.cli_args import ENGINE_DEFAULTS, MODEL_DEFAULTS

    assert ENGINE_DEFAULTS == EngineConfig() and MODEL_DEFAULTS == ModelOptions()


class SlowGrader:
    """Takes 0.4 s per answer and notes the thread it grades on."""

    def __init__(self):
        self.threads = []

    def grade(self, text, gold):
        import threading

        from arbitrage.grading import GradeResult

        self.threads.append(threading.current_thread().name)
        time.sleep(0.4)
        return GradeResult(True, "1", "ok")

    def close(self):
        pass


def test_grading_runs_beside_the_engine_and_adds_nothing_to_latency(tmp_path):
    import threading

    from arbitrage.engine import Models
    from arbitrage.run import run
    from arbitrage.testing.fakes import FakeGenerator, problems

    probs = problems([2, 3, 4, 5])
    draft = FakeGenerator("draft", {p.id: p.meta["n_steps"] for p in probs})
    grader = SlowGrader()
    cfg = RunConfig(policy="draft", out=str(tmp_path / "out"), progress=False, engine=EngineConfig(concurrency=4))
    run(cfg, models=Models(draft=draft), problems=probs, grader=grader)
    assert len(grader.threads) == 4 and threading.current_thread().name not in grader.threads
    records = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert max(r["latency_s"] for r in records) < 0.2  # no problem in flight waited for another's grading
