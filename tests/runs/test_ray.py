"""Past one machine on Ray, on a local Ray cluster the tests start on this machine (2 CPUs): a sweep under --ray
gives the same results as without it, a run whose worker is killed mid-shard finishes with every problem once
(the shard resumed), and the server as a Ray Serve deployment answers the openai client."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import ray  # in the test extra: these tests run wherever the suite does

pytestmark = pytest.mark.slow

MODELS = ["--draft", "testbed:draft", "--target", "testbed:target", "--prm", "testbed-checker:0.1:0.1"]
LIMITS = ["--max-steps", "6", "--max-step-tokens", "48", "--concurrency", "1"]


@pytest.fixture(scope="module")
def cluster():
    # Serve's proxy must answer its first readiness check within 5 s (then 10, 15) or it is killed: a worker
    # process starting on a loaded 2-core machine can take longer (what deploy() also allows a local cluster)
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def records(point: Path) -> dict:
    return {
        (r := json.loads(line))["id"]: (r["solution"], r["correct"], [s["escalated"] for s in r["steps"]])
        for line in (point / "results.jsonl").read_text().splitlines()
    }


def test_a_sweep_on_ray_gives_the_same_results(cluster, tmp_path):
    from arbitrage.cli import main

    sweep = [
        "sweep",
        "--policies",
        "draft,rsd",
        "--thresholds",
        "rsd=0.5",
        *MODELS,
        "--data",
        "testbed:test:8",
        *LIMITS,
        "--quiet",
        "--no-plots",
    ]
    assert main([*sweep, "--out", str(tmp_path / "plain")]) == 0
    assert main([*sweep, "--out", str(tmp_path / "ray"), "--ray", "--ray-tasks", "2"]) == 0
    for point in ("draft", "rsd-0.5"):
        assert records(tmp_path / "ray" / point) == records(tmp_path / "plain" / point), point
        merged = json.loads((tmp_path / "ray" / point / "run.json").read_text())
        assert len(merged["merged_from"]) == 2 and merged["settings"]["shard"] is None
    shards = sorted(p.name for p in (tmp_path / "ray" / "ray-shards").iterdir())
    assert shards == ["0", "1"]
    summary = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert {p["n"] for p in summary["points"]} == {8}


def _kill_shard_worker(shard_results: Path, killed: list) -> None:
    """Wait until shard 0 has finished a problem, then kill the Ray worker process running a shard task."""
    import psutil

    deadline = time.time() + 900
    while time.time() < deadline:
        if shard_results.is_file() and shard_results.read_text().strip():
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join(proc.info.get("cmdline") or [])
                if ("arbitrage-shard" in cmd or "shard_task" in cmd) and proc.pid not in killed:
                    proc.kill()
                    killed.append(proc.pid)
                    return
        time.sleep(0.05)


def test_a_killed_worker_is_retried_and_its_shard_resumes(cluster, tmp_path):
    from arbitrage.cli import main

    out = tmp_path / "run"
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_shard_worker, args=(out / "ray-shards" / "0" / "results.jsonl", killed), daemon=True
    )
    killer.start()
    assert (
        main(
            [
                "run",
                "--policy",
                "target",
                "--target",
                "testbed:target",
                "--data",
                "testbed:test:12",
                *LIMITS,
                "--out",
                str(out),
                "--quiet",
                "--ray",
                "--ray-tasks",
                "2",
            ]
        )
        == 0
    )
    killer.join(timeout=5)
    assert killed, "no shard worker was found to kill"
    ids = [json.loads(line)["id"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(f"testbed-test-0-{i}" for i in range(12))  # every problem exactly once
    sessions = [json.loads((out / "ray-shards" / k / "run.json").read_text())["sessions"] for k in ("0", "1")]
    assert max(len(s) for s in sessions) >= 2  # a shard was run again and resumed (a session per attempt)
    assert json.loads((out / "metrics.json").read_text())["n"] == 12


def test_the_server_as_a_ray_serve_deployment_answers_the_openai_client(cluster):
    import socket

    import openai
    from ray import serve

    from arbitrage.cli import build_parser
    from arbitrage.ray_cluster import deploy
    from arbitrage.serve_cli import app_builder

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = build_parser().parse_args(
        [
            "serve",
            "--policy",
            "rsd",
            "--threshold",
            "0.5",
            *MODELS,
            "--port",
            str(port),
            "--ray-serve",
            "--num-replicas",
            "1",
            "--max-steps",
            "6",
        ]
    )
    try:
        deploy(
            app_builder(args),
            address=None,
            host="127.0.0.1",
            port=port,
            num_replicas=1,
            autoscale=None,
            gpus_per_replica=0,
            cpus_per_replica=0.5,
            name="arbitrage",
        )
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=3, timeout=300)
        out = client.completions.create(model="arbitrage", prompt="Let a = 12. b = a + 7. c = b - 4. What is c?\n\n")
        assert "\\boxed{" in out.choices[0].text and out.usage.model_dump()["steps"] >= 1
        assert [m.id for m in client.models.list().data] == ["arbitrage"]
    finally:
        serve.shutdown()


def test_calibrate_on_ray_selects_as_without_it(cluster, tmp_path):
    from arbitrage.cli import main

    cal = [
        "calibrate",
        *MODELS,
        "--data",
        "testbed:validation:10",
        "--policies",
        "rsd",
        "--thresholds",
        "rsd=0.3,0.9",
        *LIMITS,
        "--max-loss",
        "0.3",
        "--delta",
        "0.2",
        "--quiet",
        "--no-plots",
    ]
    assert main([*cal, "--out", str(tmp_path / "plain")]) == 0
    assert main([*cal, "--out", str(tmp_path / "ray"), "--ray", "--ray-tasks", "2"]) == 0
    a, b = (json.loads((tmp_path / d / "calibration.json").read_text()) for d in ("plain", "ray"))
    assert b["n"] == a["n"] == 10
    assert [(t["threshold"], t["p_value"]) for t in b["tests"]] == [(t["threshold"], t["p_value"]) for t in a["tests"]]
    assert (b["chosen"] or {}).get("threshold") == (a["chosen"] or {}).get("threshold")
    for point in ("target", "rsd-0.3", "rsd-0.9"):
        assert records(tmp_path / "ray" / point) == records(tmp_path / "plain" / point), point
    assert sorted(p.name for p in (tmp_path / "ray" / "ray-shards").iterdir()) == ["0", "1"]
