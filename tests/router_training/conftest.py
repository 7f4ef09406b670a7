"""Router training data built from synthetic `generate` results (tests/support/router_results.py)."""

from __future__ import annotations

import pytest
from router_results import synthetic_results

from arbitrage.router_training import build_data


@pytest.fixture
def data_dir(tmp_path):
    res = synthetic_results(tmp_path / "results.jsonl")
    build_data([res], str(tmp_path / "data"), val_fraction=0.25, seed=0)
    return tmp_path / "data"
