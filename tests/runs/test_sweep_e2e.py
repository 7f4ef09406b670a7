"""A tiny end-to-end sweep on local random models: every policy and both outside baselines in one
invocation, each model loaded once, outputs per point, report and plots, and resume."""

import json
import os

import pytest

from arbitrage import factory
from arbitrage.cli import main
from arbitrage.errors import ConfigError
from arbitrage.run import RunConfig
from arbitrage.sweep import run_sweep


@pytest.fixture(scope="module")
def assets(tiny_dir, tmp_path_factory):
    """The session's tiny models (conftest.tiny_dir) and a two-problem JSON-lines file."""
    data = tmp_path_factory.mktemp("sweep_data") / "data.jsonl"
    with open(data, "w") as f:
        for i in range(2):
            f.write(json.dumps({"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n")
    return tiny_dir, data


@pytest.fixture
def builds(monkeypatch):
    """Counts model loads per role through the factory the sweep uses."""
    counts = {}

    real = factory.load_model

    def wrapper(kind, spec, role, *args, **kw):
        counts[role] = counts.get(role, 0) + 1
        return real(kind, spec, role, *args, **kw)

    monkeypatch.setattr(factory, "load_model", wrapper)
    return counts


def sweep_args(assets, out, policies, *thresholds):
    root, data = assets
    args = [
        "sweep",
        "--policies",
        policies,
        "--draft",
        str(root / "draft"),
        "--target",
        str(root / "target"),
        "--prm",
        str(root / "prm"),
        "--router",
        str(root / "router"),
        "--data",
        str(data),
        "--max-steps",
        "3",
        "--max-step-tokens",
        "6",
        "--max-total-tokens",
        "18",
        "--out",
        str(out),
        "--quiet",
        "--id-field",
        "id",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    for t in thresholds:
        args += ["--thresholds", t]
    return args


def lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f]


def test_sweep_end_to_end_loads_each_model_once_and_resumes(assets, tmp_path, builds, capsys):
    out = tmp_path / "sweep"
    rc = main(
        sweep_args(assets, out, "draft,target,rsd,router,oracle,specreason,assisted", "rsd=0.3,0.7", "specreason=4.5")
    )
    assert rc == 0
    assert builds == {"draft": 1, "target": 1, "prm": 1, "router": 1}
    dirs = ["draft", "target", "rsd-0.3", "rsd-0.7", "router-0.5", "oracle-0", "specreason-4.5", "assisted"]
    summary = json.load(open(out / "sweep.json"))
    assert [p["dir"] for p in summary["points"]] == dirs
    for d, m in zip(dirs, summary["points"]):
        recs = lines(out / d / "results.jsonl")
        assert sorted(r["id"] for r in recs) == ["q0", "q1"] and m["n"] == 2
        assert json.load(open(out / d / "metrics.json"))["accuracy"] == m["accuracy"]
    by = {p["dir"]: p for p in summary["points"]}
    assert by["draft"]["target_calls"] == 0 and by["target"]["draft_calls"] == 0
    for d in ("rsd-0.3", "rsd-0.7", "router-0.5", "specreason-4.5"):
        assert by[d]["target_calls"] == by[d]["escalated_steps"], d  # the target ran only when escalated
    assert by["specreason-4.5"]["judge_calls"] == by["specreason-4.5"]["steps"] > 0
    assert by["assisted"]["escalation_rate"] is None and by["assisted"]["target_tokens"] > 0
    assert {c["b"] for c in summary["comparisons"]} == {"rsd", "target", "specreason", "assisted"}
    assert all(c["status"] in ("matched", "no_overlap") for c in summary["comparisons"])
    for png in ("accuracy_vs_latency.png", "accuracy_vs_escalation.png"):
        assert open(out / png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "router vs rsd" in printed and "specreason@4.5" in printed
    assert "not comparable" in printed  # default --concurrency 8 against assisted's batch size 1

    # Re-run with one more point: finished points load and recompute nothing; the new rsd point loads only
    # what rsd needs, once.
    builds.clear()
    assert (
        main(
            sweep_args(
                assets, out, "draft,target,rsd,router,oracle,specreason,assisted", "rsd=0.3,0.5,0.7", "specreason=4.5"
            )
        )
        == 0
    )
    assert builds == {"draft": 1, "target": 1, "prm": 1}
    for d in dirs + ["rsd-0.5"]:
        assert sorted(r["id"] for r in lines(out / d / "results.jsonl")) == ["q0", "q1"], d
    builds.clear()
    assert main(sweep_args(assets, out, "rsd", "rsd=0.5")) == 0
    assert builds == {}  # everything finished: nothing loaded


def test_sweep_checks_every_point_before_loading(assets, tmp_path, builds):
    root, data = assets
    base = RunConfig(
        policy="draft", out="", data=str(data), models={"draft": str(root / "draft"), "target": str(root / "target")}
    )
    with pytest.raises(ConfigError, match="out of range"):
        run_sweep(base, [("draft", None), ("rsd", 1.5)], str(tmp_path / "s"), progress=False)
    with pytest.raises(ConfigError, match="needs --prm"):
        run_sweep(base, [("draft", None), ("rsd", 0.5)], str(tmp_path / "s"), progress=False)
    with pytest.raises(ConfigError, match="servers"):
        run_sweep(
            RunConfig(
                policy="draft",
                out="",
                data=str(data),
                models={"draft": "http://127.0.0.1:9/v1", "target": str(root / "target")},
            ),
            [("assisted", None)],
            str(tmp_path / "s"),
            progress=False,
        )
    assert builds == {} and not os.path.exists(tmp_path / "s" / "draft")


@pytest.mark.parametrize("interleave", [True, False])
def test_points_take_turns_problem_by_problem(tmp_path, monkeypatch, interleave):
    """Interleaved (the default), every point runs problem 1 before any point runs problem 2, and the order
    of the points rotates from one problem to the next; otherwise each point runs all its problems in turn."""
    from arbitrage.engine import EngineConfig
    from arbitrage.run import PointRun

    order = []
    real = PointRun.produce

    def produce(self, problems, models, saver, n_todo=None):
        order.extend((self.cfg.policy, p.id) for p in self.todo(problems))
        return real(self, problems, models, saver, n_todo)

    monkeypatch.setattr(PointRun, "produce", produce)
    base = RunConfig(
        policy="draft",
        out=str(tmp_path),
        data="testbed:test:3",
        models={"draft": "testbed:draft", "target": "testbed:target"},
        engine=EngineConfig(max_steps=6, max_step_tokens=48, concurrency=1),
        progress=False,
    )
    metrics = run_sweep(
        base,
        [("draft", None), ("target", None)],
        str(tmp_path / "sweep"),
        progress=False,
        report=False,
        interleave=interleave,
    )
    ids = [f"testbed-test-0-{i}" for i in range(3)]
    if interleave:
        assert order == [
            ("draft", ids[0]),
            ("target", ids[0]),
            ("target", ids[1]),
            ("draft", ids[1]),
            ("draft", ids[2]),
            ("target", ids[2]),
        ]
    else:
        assert order == [("draft", i) for i in ids] + [("target", i) for i in ids]
    assert [m["n"] for m in metrics] == [3, 3] and all(m["interleaved"] == interleave for m in metrics)
