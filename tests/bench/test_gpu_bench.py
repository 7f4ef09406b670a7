"""bench/gpu_paper_scale.py on its CPU --tiny path: the JSON it writes, exact escalation rates from the plan,
prefill of new tokens only, and the synthetic tokenizer's exact round trip."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_paper_scale.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_paper_scale", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_synthetic_tokenizer_round_trip(bench):
    tok = bench.SyntheticTokenizer(512)
    ids = [5, 511, 0, 77]
    assert tok.encode(tok.decode(ids)) == ids
    assert tok("ab<3>", add_special_tokens=True)["input_ids"] == [ord("a") % 512, ord("b") % 512, 3]


def test_escalation_plan_hits_the_rate(bench):
    from arbitrage.types import Problem

    probs = [Problem(f"p{i}", "q", "q") for i in range(32)]
    for rate in (0.2, 0.4):
        plan = bench.escalation_plan(probs, 8, rate, seed=0)
        total = sum(len(v) for v in plan.values())
        assert total == math.floor(rate * 8 * 32 + 1e-9)
        assert all(s < 8 for v in plan.values() for s in v)
        assert plan == bench.escalation_plan(probs, 8, rate, seed=0)  # seeded


def test_tiny_run_writes_json(bench, tmp_path, capsys):
    out = tmp_path / "gpu.json"
    report = bench.main(["--tiny", "--batch-sizes", "1,2", "--problems-b1", "2", "--steps", "5", "--out", str(out)])
    assert json.load(open(out)) == json.loads(json.dumps(report))
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    assert set(report["batch"]) == {"1", "2"} and report["tiny"] is True
    for b, row in report["batch"].items():
        n = row["problems"]
        tgt = row["target"]
        assert tgt["escalation_rate"] == 1.0 and tgt["steps"] == 5 * n and tgt["target_calls"] == 5 * n
        assert tgt["prefill"]["target"]["prefill_mean"] == 1.0  # only the last token it sampled
        for rate in (0.2, 0.4):
            r = row[f"router@{rate:g}"]
            assert r["escalation_rate"] == pytest.approx(math.floor(rate * 5 * n + 1e-9) / (5 * n))
            assert r["target_calls"] == round(r["escalation_rate"] * r["steps"])
            assert r["speedup_vs_target"] > 0
        for r in (v for v in row.values() if isinstance(v, dict)):
            assert r["engine_overhead"] >= 1.0 and r["forward_s"] > 0
            assert r["forward_s_by_model"]["router"] >= 0
            for role, p in r["prefill"].items():
                assert p["prefill_le_appended"] == 1.0, (b, role)
                assert p["prefill_mean"] <= p["appended_mean"] < p["context_mean"] or p["calls_after_first"] == 0


def test_gpu_suite_tiny_checks_equality_and_writes_every_figure(tmp_path):
    """bench/gpu_suite.py, the one prepared device run, on tiny shapes on the CPU."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT.parent / "gpu_suite.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    out = tmp_path / "suite.json"
    report = suite.main(["--tiny", "--out", str(out)])
    assert report["equality"]["greedy_equal"] and report["equality"]["tokens_compared"] > 50
    for shape in ("1.5b", "7b"):
        row = report["decode"][shape]
        assert row["floor_ms_per_token"] > 0 and row["fast_b1_ms_per_token"] > 0 and row["plain_b1_ms_per_token"] > 0
    for row in report["paper_scale_fast"].values():
        assert row["target"]["prefill"]["target"]["prefill_le_appended"] == 1.0
        assert 0 < row["draft_target_step_cost"] and row["router@0.2"]["speedup_vs_target"] > 0
    assert set(report["goals"]) == {
        "decode_7b_b1_within_2x_floor",
        "decode_1.5b_b1_within_3x_floor",
        "draft_target_step_cost_le_0.35",
        "engine_overhead_le_1.10",
    }
    assert json.loads(out.read_text())["tiny"] is True
