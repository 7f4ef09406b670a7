"""Issue item 5: on `generate` data from real (tiny, trained) models, a trained router ranks held-out steps by
advantage clearly better than the same router trained on shuffled labels.

The data is tests/fixtures/router_generate.jsonl.gz: a `generate` run of the real engine with two checkpoints of
a tiny Qwen2 LM trained on an iterated-map task and an exact step checker as PRM (see router_signal_fixture.py,
which made it). Validation problems are disjoint from training problems (build-data splits by problem).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from arbitrage.router_training import build_data, evaluate_router, train_router

FIXTURE = Path(__file__).parents[1] / "fixtures" / "router_generate.jsonl.gz"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("router_signal") / "data"
    counts = build_data([str(FIXTURE)], str(out), val_fraction=0.3, seed=0)
    assert counts["problems"]["validation"] >= 60 and counts["validation"]["escalate"] >= 40, counts
    return out


def test_fixture_is_real_generate_output():
    with gzip.open(FIXTURE, "rt") as f:
        rec = json.loads(f.readline())
    assert rec["policy"] == "generate"
    s = rec["steps"][0]
    assert {"prm_draft", "prm_target", "advantage"} <= set(s["scores"])
    assert len(s["draft"]["logprobs"]) == len(s["draft"]["entropies"]) == s["draft"]["n_tokens"]


def test_probe_router_beats_shuffled_label_controls(data_dir, tmp_path):
    real = evaluate_router(
        train_router(str(data_dir), str(tmp_path / "probe"), kind="probe", log=lambda s: None), str(data_dir)
    )
    controls = [
        evaluate_router(
            train_router(
                str(data_dir), str(tmp_path / f"ctl{s}"), kind="probe", seed=s, shuffle_labels=True, log=lambda s: None
            ),
            str(data_dir),
        )
        for s in range(3)
    ]
    best_control = max(c["spearman"] for c in controls)
    assert real["spearman"] > 0.3 and real["roc_auc"] > 0.75, real
    assert real["spearman"] > best_control + 0.2, ([c["spearman"] for c in controls], real["spearman"])
    assert real["spearman_p"] < 1e-4
    assert real["balanced_accuracy"] > max(c["balanced_accuracy"] for c in controls)
