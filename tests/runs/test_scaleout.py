"""Past one machine: sharded runs (and their checks when joined), several servers per model role (sticky by
problem, a dead replica skipped without losing a problem), and router training under torchrun (DDP, gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from arbitrage.cli import main
from arbitrage.data import load_problems
from arbitrage.errors import DataError
from arbitrage.router_training import build_data
from arbitrage.router_training.dataset import read_results
from arbitrage.shards import shard_of

GEN = [
    "--policy",
    "generate",
    "--draft",
    "testbed:draft",
    "--target",
    "testbed:target",
    "--prm",
    "testbed-checker:0.1:0.1",
    "--data",
    "testbed:train:12",
    "--quiet",
    "--max-steps",
    "6",
]


def test_shards_are_a_stable_partition_by_id():
    probs = load_problems("testbed:train:60")
    parts = [shard_of(probs, f"{k}/3") for k in range(3)]
    ids = [p.id for part in parts for p in part]
    assert sorted(ids) == sorted(p.id for p in probs) and len(set(ids)) == len(ids) and all(parts)
    more = load_problems("testbed:train:90")  # the data grows: every shard keeps its problems
    for k, part in enumerate(parts):
        assert {p.id for p in part} <= {p.id for p in shard_of(more, f"{k}/3")}


def test_the_shard_of_an_id_is_pinned_across_versions():
    """Shards written by two versions must partition the same way: the hash is part of the file format."""
    from arbitrage.shards import shard_index

    got = {pid: shard_index(pid, 7) for pid in ("0", "1", "test/precalculus/807.json", "testbed-test-0-3", "ID-9")}
    assert got == PINNED_SHARDS


PINNED_SHARDS = {"0": 3, "1": 2, "test/precalculus/807.json": 0, "testbed-test-0-3": 0, "ID-9": 3}


@pytest.fixture(scope="module")
def shard_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    assert main(["run", *GEN, "--out", str(root / "whole")]) == 0
    for k in range(3):
        assert main(["run", *GEN, "--shard", f"{k}/3", "--out", str(root / f"s{k}")]) == 0
    return root


def test_three_shards_give_the_examples_of_one_unsharded_run(shard_runs, tmp_path):
    def key(examples):
        return sorted((e.problem_id, e.index, e.label, round(e.advantage, 6), e.draft["text"]) for e in examples)

    whole, _ = read_results([str(shard_runs / "whole")])
    shards, _ = read_results([str(shard_runs / f"s{k}") for k in range(3)])
    assert key(shards) == key(whole) and len(whole) > 12
    counts = build_data([str(shard_runs / f"s{k}") for k in range(3)], str(tmp_path / "d"))
    assert counts["all"]["n"] == len(whole)


def test_missing_or_overlapping_shards_are_refused(shard_runs, tmp_path):
    with pytest.raises(DataError, match="missing shard"):
        read_results([str(shard_runs / "s0"), str(shard_runs / "s2")])
    shutil.copytree(shard_runs / "s1", tmp_path / "s1-again")
    with pytest.raises(DataError, match="given twice"):
        read_results([str(shard_runs / f"s{k}") for k in range(3)] + [str(tmp_path / "s1-again")])
    with pytest.raises(DataError, match="counted twice"):
        read_results([str(shard_runs / "whole"), str(shard_runs / "s0")])


def test_sweeps_on_shards_merge_into_one_report(tmp_path, capsys):
    args = [
        "sweep",
        "--policies",
        "draft,target",
        "--draft",
        "testbed:draft",
        "--target",
        "testbed:target",
        "--data",
        "testbed:test:9",
        "--quiet",
        "--no-plots",
        "--max-steps",
        "6",
    ]
    for k in range(2):
        assert main([*args, "--shard", f"{k}/2", "--out", str(tmp_path / f"w{k}")]) == 0
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    assert (
        main(["sweep-merge", str(tmp_path / "w0"), str(tmp_path / "w1"), "--out", str(tmp_path / "m"), "--no-plots"])
        == 0
    )
    merged = json.loads((tmp_path / "m" / "sweep.json").read_text())
    whole = json.loads((tmp_path / "whole" / "sweep.json").read_text())
    for a, b in zip(merged["points"], whole["points"]):
        assert (a["policy"], a["n"], a["accuracy"], a["target_tokens"]) == (
            b["policy"],
            b["n"],
            b["accuracy"],
            b["target_tokens"],
        )
    assert main(["sweep-merge", str(tmp_path / "w0"), "--out", str(tmp_path / "m2"), "--no-plots"]) == 2
    assert "missing shard" in capsys.readouterr().err


def _served_problem(prompt: str) -> str:
    return prompt.split("\n\n")[0]


def test_replicas_split_the_load_keep_each_problem_on_one_and_survive_one_dying(tmp_path):
    from arbitrage.server.running import ThreadedServer
    from arbitrage.testing.fake_server import make_app

    apps = [make_app(f"r{i}", per_token_s=0.01, tokens_per_step=4, steps=4) for i in range(2)]
    servers = [ThreadedServer(app).start() for app in apps]
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "question": f"Problem {i}.", "answer": "1", "prompt": f"Problem {i}.\n\n"})
            + "\n"
            for i in range(24)
        )
    )
    spec = ",".join(s.url + "/v1" for s in servers)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "arbitrage.cli",
        "run",
        "--policy",
        "draft",
        "--draft",
        spec,
        "--data",
        str(data),
        "--out",
        str(out),
        "--quiet",
        "--concurrency",
        "8",
    ]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while sum(a.state.requests for a in apps) < 30 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        servers[1].stop()  # one replica dies mid-run
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    finally:
        servers[0].stop()
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == sorted(f"q{i}" for i in range(24))  # no problem lost
    assert all(r["correct"] and r["n_steps"] == lines[0]["n_steps"] for r in lines)
    served = [{_served_problem(p) for p in a.state.prompts} for a in apps]
    assert served[0] and served[1]  # the load was split
    # before the second replica died, each problem's calls stayed on one replica; afterwards its problems moved
    moved = served[0] & served[1]
    assert len(moved) <= len(served[1]) and len(served[0] | served[1]) == 24


def test_replicas_stick_by_problem_and_fail_only_when_all_are_down():
    from arbitrage.backends.http_common import Unreachable
    from arbitrage.backends.replicas import Replicas
    from arbitrage.errors import BackendError
    from arbitrage.types import Generation, GenerationRequest

    class Replica:
        def __init__(self, name):
            self.name, self.separator, self.keys, self.dead = name, "\n\n", [], False

        def generate(self, reqs):
            if self.dead:
                raise Unreachable(f"{self.name} is down", "refused")
            self.keys += [r.key for r in reqs]
            return [Generation(self.name, "separator", [1]) for _ in reqs]

        def release(self, key):
            pass

    a, b = Replica("a"), Replica("b")
    rep = Replicas([a, b], retry_after=60)
    reqs = [GenerationRequest(f"p{i}", "q", [], 4) for i in range(40)]
    first = rep.generate(reqs)
    again = rep.generate(reqs)
    assert [g.text for g in first] == [g.text for g in again]  # sticky: the same replica for the same problem
    assert 5 < len(a.keys) < 75 and len(a.keys) + len(b.keys) == 80
    b.dead = True
    out = rep.generate(reqs)
    assert all(g.text == "a" for g in out) and rep.down_until[1] > 0
    a.dead = True
    with pytest.raises(BackendError, match="all 2 replicas"):
        rep.generate(reqs)


@pytest.mark.slow
def test_router_training_under_torchrun_matches_one_process(tmp_path):
    """DDP with two CPU processes (gloo): the run completes, one process writes the router, and its held-out
    figures agree with a single-process run's (same data and recipe) within 0.05 ROC-AUC."""
    from router_results import synthetic_results

    from arbitrage.router_training import evaluate_router
    from arbitrage.testing import make_causal_lm

    build_data(
        [synthetic_results(tmp_path / "r.jsonl", n_problems=80, seed=5)],
        str(tmp_path / "data"),
        val_fraction=0.25,
        seed=0,
    )
    make_causal_lm(str(tmp_path / "base"), hidden=32, layers=2, seed=3)
    train = [
        "router",
        "train",
        "--data",
        str(tmp_path / "data"),
        "--base",
        str(tmp_path / "base"),
        "--lr",
        "5e-3",
        "--epochs",
        "6",
        "--batch-size",
        "4",
        "--device",
        "cpu",
    ]
    assert main([*train, "--out", str(tmp_path / "one")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29531",
            "-m",
            "arbitrage.cli",
            *train,
            "--out",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((tmp_path / "ddp" / "arbitrage_router.json").read_text())
    assert meta["processes"] == 2 and done.stdout.count(str(tmp_path / "ddp")) == 1  # rank 0 alone wrote it
    one = evaluate_router(str(tmp_path / "one"), str(tmp_path / "data"))
    ddp = evaluate_router(str(tmp_path / "ddp"), str(tmp_path / "data"))
    assert ddp["roc_auc"] > 0.7 and abs(ddp["roc_auc"] - one["roc_auc"]) <= 0.05, (one["roc_auc"], ddp["roc_auc"])


def test_replicas_health_probes_every_replica():
    from arbitrage.backends.replicas import Replicas

    class Replica:
        def __init__(self, state):
            self.state = state

        def health(self):
            return self.state

        def release(self, key):
            pass

    assert Replicas([Replica("up"), Replica("up")]).health() == "up"
    assert Replicas([Replica("up"), Replica("down")]).health() == "degraded"
    assert Replicas([Replica("down"), Replica("down")]).health() == "down"
