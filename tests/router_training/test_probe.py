"""The probe router (logistic regression on the draft's features): trained, saved, loaded, run through the
router protocol, on hidden states, and end to end from a real `generate` run to `arbitrage run --policy router`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from router_results import QUESTION, synthetic_results  # tests/support

from arbitrage.cli import main
from arbitrage.errors import ConfigError
from arbitrage.factory import ModelOptions, load_model
from arbitrage.router_training import build_data, evaluate_router, train_router
from arbitrage.router_training.probe import ProbeRouter, is_probe_router, load_probe_router
from arbitrage.types import RouteRequest, Step


def probe_needs_hidden(path) -> bool:
    return "last_hidden" in load_probe_router(str(path)).draft_features


def test_probe_router_learns_from_draft_features(data_dir, tmp_path):
    out, ctl = str(tmp_path / "probe"), str(tmp_path / "control")
    train_router(str(data_dir), out, kind="probe", log=lambda s: None)
    train_router(str(data_dir), ctl, kind="probe", shuffle_labels=True, log=lambda s: None)
    assert is_probe_router(out) and not probe_needs_hidden(out)
    assert sorted(p.name for p in (tmp_path / "probe").iterdir()) == ["arbitrage_router.json"]  # JSON, no pickle
    m = evaluate_router(out, str(data_dir))
    assert m["roc_auc"] > 0.95 and m["spearman"] > 0.6 and m["balanced_accuracy"] > 0.9, m
    # grouped cross-validation (by problem) chose C: near-perfect on the real labels, chance on permuted ones
    real, control = (json.loads((tmp_path / d / "arbitrage_router.json").read_text()) for d in ("probe", "control"))
    assert max(real["cv_auc"].values()) > 0.95 and max(control["cv_auc"].values()) < 0.75
    assert control["shuffled_labels"] and control["train_counts"] == real["train_counts"]


def test_probe_router_predicts_through_the_router_protocol(data_dir, tmp_path):
    out = train_router(str(data_dir), str(tmp_path / "probe"), kind="probe", C=1.0, log=lambda s: None)
    router = load_model("router", out, "router", ModelOptions())
    assert isinstance(router, ProbeRouter) and router.name == "router"
    unsure = Step(
        "draft",
        "12 * 12 = 150.",
        "separator",
        4,
        logprobs=[-2.1, -1.8, -2.5, -1.9],
        extras={"entropies": [2.0, 2.2, 1.9, 2.1]},
    )
    sure = Step(
        "draft",
        "12 * 12 = 144.",
        "separator",
        4,
        logprobs=[-0.2, -0.3, -0.1, -0.4],
        extras={"entropies": [0.5, 0.6, 0.7, 0.5]},
    )
    p_unsure, p_sure = router.predict([RouteRequest("a", QUESTION, [], unsure), RouteRequest("b", QUESTION, [], sure)])
    assert p_unsure > 0.5 > p_sure
    meta = json.loads((tmp_path / "probe" / "arbitrage_router.json").read_text())
    assert meta["C"] == 1.0 and len(meta["coef"]) == len(meta["features"])
    with pytest.raises(ConfigError, match="entropies"):
        router.predict([RouteRequest("c", QUESTION, [], Step("draft", "x", "separator", 1, logprobs=[-1.0]))])


def test_probe_on_hidden_states(tmp_path):
    res = synthetic_results(tmp_path / "r.jsonl", hidden=True)
    build_data([res], str(tmp_path / "d"), val_fraction=0.25)
    out = train_router(
        str(tmp_path / "d"), str(tmp_path / "p"), kind="probe", features=["hidden", "shape"], log=lambda s: None
    )
    assert probe_needs_hidden(out)
    assert evaluate_router(out, str(tmp_path / "d"))["roc_auc"] > 0.8
    with pytest.raises(ConfigError, match="hidden state"):
        load_model("router", out, "router", ModelOptions()).predict(
            [RouteRequest("a", QUESTION, [], Step("draft", "x", "separator", 1))]
        )


def test_probe_end_to_end_from_a_real_generate_run(tiny_dir, tmp_path, capsys):
    """generate (tiny random models, draft hidden states on) -> build-data -> train probe -> eval -> run --policy
    router with it; and a probe on the draft's hidden state, run with hidden states on."""
    from arbitrage.engine import EngineConfig
    from arbitrage.run import RunConfig, run

    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "question": f"What is {i} + {2 * i}?", "answer": str(3 * i)}) + "\n"
            for i in range(6)
        )
    )
    models = {"draft": str(tiny_dir / "draft"), "target": str(tiny_dir / "target"), "prm": str(tiny_dir / "prm")}
    engine = EngineConfig(max_steps=3, max_step_tokens=6)
    opts = ModelOptions(device="cpu", temperature=1.0, return_hidden=True)
    run(
        RunConfig(
            "generate",
            str(tmp_path / "gen"),
            str(data),
            models=models,
            engine=engine,
            model_options=opts,
            progress=False,
        )
    )
    assert (
        main(["router", "build-data", str(tmp_path / "gen"), "--out", str(tmp_path / "d"), "--val-fraction", "0.3"])
        == 0
    )
    assert (
        main(
            [
                "router",
                "train",
                "--kind",
                "probe",
                "--data",
                str(tmp_path / "d"),
                "--out",
                str(tmp_path / "p"),
                "--C",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "router",
                "eval",
                "--router",
                str(tmp_path / "p"),
                "--data",
                str(tmp_path / "d"),
                "--out-json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    assert "Spearman" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text())["n"] > 0
    assert (
        main(
            [
                "run",
                "--policy",
                "router",
                "--router",
                str(tmp_path / "p"),
                "--threshold",
                "0.5",
                "--out",
                str(tmp_path / "run"),
                "--draft",
                models["draft"],
                "--target",
                models["target"],
                "--data",
                str(data),
                "--max-steps",
                "3",
                "--max-step-tokens",
                "6",
                "--quiet",
                "--device",
                "cpu",
                "--temperature",
                "1.0",
            ]
        )
        == 0
    )
    steps = [
        s for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines() for s in json.loads(line)["steps"]
    ]
    assert steps and all(s["escalated"] == (s["scores"]["router"] > 0.5) for s in steps)
    assert np.isfinite([s["scores"]["router"] for s in steps]).all()
    # the draft's hidden state (32 values for this draft) as probe features
    assert "last_hidden" in json.loads((tmp_path / "d" / "meta.json").read_text())["draft_features"]
    hidden = train_router(
        str(tmp_path / "d"),
        str(tmp_path / "ph"),
        kind="probe",
        features=["hidden", "logprobs"],
        C=1.0,
        log=lambda s: None,
    )
    assert (
        probe_needs_hidden(hidden)
        and json.loads((tmp_path / "ph" / "arbitrage_router.json").read_text())["hidden_dim"] == 32
    )
    m = run(
        RunConfig(
            "router",
            str(tmp_path / "run_h"),
            str(data),
            threshold=0.5,
            models={**models, "router": hidden},
            engine=engine,
            model_options=opts,
            progress=False,
        )
    )
    assert m["n"] == 6 and m["router_s"] > 0
    # through the CLI the draft's hidden states are turned on by the router itself, with no flag
    assert (
        main(
            [
                "run",
                "--policy",
                "router",
                "--router",
                hidden,
                "--threshold",
                "0.5",
                "--out",
                str(tmp_path / "run_hcli"),
                "--draft",
                models["draft"],
                "--target",
                models["target"],
                "--data",
                str(data),
                "--max-steps",
                "3",
                "--max-step-tokens",
                "6",
                "--quiet",
                "--device",
                "cpu",
                "--temperature",
                "1.0",
                "--limit",
                "2",
            ]
        )
        == 0
    )
    # and `--draft-hidden-states` records them in generate runs for training
    assert (
        main(
            [
                "run",
                "--policy",
                "generate",
                "--draft-hidden-states",
                "--out",
                str(tmp_path / "gen_cli"),
                "--draft",
                models["draft"],
                "--target",
                models["target"],
                "--prm",
                models["prm"],
                "--data",
                str(data),
                "--max-steps",
                "2",
                "--max-step-tokens",
                "6",
                "--quiet",
                "--device",
                "cpu",
                "--limit",
                "1",
            ]
        )
        == 0
    )
    rec = json.loads((tmp_path / "gen_cli" / "results.jsonl").read_text().splitlines()[0])
    assert len(rec["steps"][0]["draft"]["last_hidden"]) == 32
