"""bench/real_lm/summarize.py: the paired comparison against target-only (sign test, latency-ratio interval)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("real_lm_summarize", ROOT / "bench" / "real_lm" / "summarize.py")
summarize = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summarize)


@pytest.mark.parametrize(
    "wins,losses,p", [(0, 0, 1.0), (0, 5, 2 / 32), (5, 0, 2 / 32), (3, 3, 1.0), (1, 9, 2 * 11 / 1024)]
)
def test_sign_test_is_the_exact_binomial(wins, losses, p):
    assert summarize.sign_test_p(wins, losses) == pytest.approx(p)


def _point(root: Path, name: str, policy: str, rows: list[tuple[bool, float]], threshold=None) -> dict:
    d = root / name
    d.mkdir()
    (d / "results.jsonl").write_text(
        "".join(
            json.dumps({"id": str(i), "question": "q", "steps": [], "correct": c, "latency_s": t}) + "\n"
            for i, (c, t) in enumerate(rows)
        )
    )
    m = {
        "policy": policy,
        "threshold": threshold,
        "n": len(rows),
        "accuracy": sum(c for c, _ in rows) / len(rows),
        "accuracy_se": 0.1,
        "escalation_rate": 0.5,
        "latency_s_mean": sum(t for _, t in rows) / len(rows),
        "latency_s_p50": 1.0,
        "target_calls": 0,
        "target_tokens": 0,
        "draft_tokens_accepted": 0,
        "draft_tokens_discarded": 0,
        "dir": f"/moved/elsewhere/{name}",
    }
    return m


def test_paired_table_from_a_moved_sweep(tmp_path):
    target = _point(tmp_path, "target", "target", [(True, 10.0)] * 6 + [(False, 10.0)] * 4)
    # the router: right on the same 6 and on 2 more, wrong on none of the target's; half the latency throughout
    router = _point(tmp_path, "router-0.5", "router", [(True, 5.0)] * 8 + [(False, 5.0)] * 2, threshold=0.5)
    summary = {"points": [target, router], "frontiers": {}, "comparisons": []}
    (tmp_path / "sweep.json").write_text(json.dumps(summary))
    assert summarize.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "results.md").read_text()
    paired = md.split("Paired against target-only")[1]
    row = next(line for line in paired.splitlines() if line.startswith("| router τ=0.5 | 10 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:5] == ["+0.200", "2 / 0", "0.50"]
    assert cells[5] == "2.00x (2.00–2.00)"  # every resample has the same ratio
