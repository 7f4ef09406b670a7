"""Training, saving, loading and judging routers: the token classifier (the paper's router) on a tiny random
base and `arbitrage run --policy router` with it; the metrics and the thresholds for asked escalation rates.
The probe router: test_probe.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from router_results import QUESTION, synthetic_results

from arbitrage.cli import main
from arbitrage.errors import ConfigError
from arbitrage.factory import ModelOptions, load_model
from arbitrage.router_training import evaluate_router, train_router
from arbitrage.router_training.dataset import load_examples
from arbitrage.router_training.evaluate import metrics, router_requests
from arbitrage.router_training.train import LastTokenCollator, encode_example
from arbitrage.scoring.hf import HFRouter
from arbitrage.types import RouteRequest, Step


def test_training_tokenization_equals_the_serving_routers(tiny_dir, data_dir):
    from transformers import AutoTokenizer

    router = HFRouter.from_pretrained(str(tiny_dir / "router"), device="cpu", reuse_cache=False)
    tok = AutoTokenizer.from_pretrained(str(tiny_dir / "router"))
    examples = load_examples(str(data_dir / "train.jsonl"))
    for ex, req in zip(examples, router_requests(examples)):
        assert encode_example(tok, ex, "\n\n", True) == router.row_ids(req)
    ids = encode_example(tok, examples[-1], "\n\n", True)
    assert encode_example(tok, examples[-1], "\n\n", True, max_length=5) == ids[-5:]


def test_collator_puts_the_label_on_the_last_real_token_only():
    batch = LastTokenCollator(pad_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100, -100, 1]}, {"input_ids": [8], "labels": [0]}]
    )
    assert batch["labels"].tolist() == [[-100, -100, 1], [0, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]


def test_classifier_router_trains_saves_and_runs(tiny_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "router"
    assert (
        main(
            [
                "router",
                "train",
                "--data",
                str(data_dir),
                "--out",
                str(out),
                "--base",
                str(tiny_dir / "draft"),
                "--lr",
                "5e-3",
                "--epochs",
                "8",
                "--batch-size",
                "8",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    meta = json.loads((out / "arbitrage_router.json").read_text())
    assert meta["kind"] == "classifier" and meta["separator"] == "\n\n" and meta["author_tags"] is True
    assert meta["train_counts"]["escalate"] == meta["train_counts"]["keep"]
    assert json.loads((out / "config.json").read_text())["architectures"][0].endswith("ForTokenClassification")
    router = load_model("router", str(out), "router", ModelOptions(device="cpu"))
    assert isinstance(router, HFRouter)
    # the label is a function of the draft step's text: the fine-tuned classifier must have learnt it
    m = evaluate_router(str(out), str(data_dir), out_json=str(tmp_path / "eval.json"), device="cpu")
    assert m["roc_auc"] > 0.9 and m["spearman"] > 0.5, m
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == m["n"]
    # ... and `arbitrage run --policy router --router DIR` loads and uses it
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"id": "a", "question": "What is 2+2?", "answer": "4"}) + "\n")
    run_out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--policy",
                "router",
                "--router",
                str(out),
                "--draft",
                str(tiny_dir / "draft"),
                "--target",
                str(tiny_dir / "target"),
                "--data",
                str(data),
                "--out",
                str(run_out),
                "--max-steps",
                "3",
                "--max-step-tokens",
                "6",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rec = json.loads((run_out / "results.jsonl").read_text().splitlines()[0])
    assert all(0.0 <= s["scores"]["router"] <= 1.0 for s in rec["steps"])
    assert all(s["escalated"] == (s["scores"]["router"] > 0.5) for s in rec["steps"])


def test_classifier_needs_a_base(data_dir, tmp_path, capsys):
    assert main(["router", "train", "--data", str(data_dir), "--out", str(tmp_path / "r")]) == 2
    assert "needs --base" in capsys.readouterr().err


def test_metrics_on_known_predictions():
    adv = [-0.5, -0.1, 0.0, 0.2, 0.6]
    labels = [0, 0, 0, 1, 1]
    m = metrics([0.1, 0.2, 0.3, 0.7, 0.9], adv, labels, tau=0.5)
    assert m["spearman"] == pytest.approx(1.0) and m["roc_auc"] == 1.0
    assert m["accuracy_escalate"] == m["accuracy_keep"] == m["oracle_agreement"] == 1.0
    assert m["escalation_rate"] == 0.4
    r = metrics([0.9, 0.8, 0.7, 0.3, 0.1], adv, labels, tau=0.5, oracle_tau=-0.2)
    assert r["spearman"] == pytest.approx(-1.0) and r["roc_auc"] == 0.0
    assert r["accuracy_escalate"] == 0.0 and r["accuracy_keep"] == 0.0 and r["escalation_rate"] == 0.6
    assert r["oracle_escalation_rate"] == 0.8 and r["oracle_agreement"] == pytest.approx(0.4)
    assert math.isnan(metrics([0.5] * 5, adv, labels)["spearman"])


def test_thresholds_hit_the_asked_escalation_rates(data_dir, tmp_path, capsys):
    """`router thresholds`: tau per escalation rate for the router (y_hat > tau) and RSD (PRM(draft) < tau), read
    off every recorded step; a sweep at those taus escalates those shares of the steps."""
    from arbitrage.router_training.thresholds import rate_thresholds

    res = synthetic_results(tmp_path / "cal.jsonl", n_problems=60, seed=3)
    out = train_router(str(data_dir), str(tmp_path / "probe"), kind="probe", log=lambda s: None)
    found = rate_thresholds([res], [0.2, 0.5], out)
    examples = [json.loads(line) for line in open(res)]
    n_steps = sum(len(r["steps"]) for r in examples)
    assert found["n_steps"] == n_steps and found["n_problems"] == 60
    bad_share = np.mean([s["escalated"] for r in examples for s in r["steps"]])
    assert found["oracle_rate"] == pytest.approx(bad_share)  # A > 0 exactly on the "bad" steps here
    # the router's y_hat is continuous: its rates come out within a step of the asked ones
    for p in found["router"]:
        assert abs(p["achieved"] - p["rate"]) <= 1.5 / n_steps, p
    # y_hat ranks the bad steps first, so at the oracle's own rate the router picks (almost) exactly them
    router = load_model("router", out, "router", ModelOptions())
    tau_bad = rate_thresholds([res], [bad_share], out)["router"][0]["tau"]
    picked = [
        router.predict(
            [
                RouteRequest(
                    "k",
                    QUESTION,
                    [],
                    Step(
                        "draft",
                        s["draft"]["text"],
                        "separator",
                        s["n_tokens"],
                        logprobs=s["draft"]["logprobs"],
                        extras={"entropies": s["draft"]["entropies"]},
                    ),
                )
            ]
        )[0]
        > tau_bad
        for r in examples
        for s in r["steps"]
    ]
    truth = [s["escalated"] for r in examples for s in r["steps"]]
    assert np.mean(np.array(picked) == np.array(truth)) > 0.95
    # RSD: the PRM(draft) scores here take two values (0.2 and 0.9): tau falls between them (a plain quantile
    # would land on a tied value), escalating the steps scored 0.2, the share closest to the asked rate
    rsd = {p["rate"]: p for p in found["rsd"]}
    assert 0.2 < rsd[0.5]["tau"] < 0.9 and rsd[0.5]["achieved"] == pytest.approx(bad_share)
    assert (
        main(
            ["router", "thresholds", res, "--router", out, "--rates", "0.5,0.2", "--out-json", str(tmp_path / "t.json")]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "--thresholds rsd=" in printed and "--thresholds router=" in printed
    assert json.loads((tmp_path / "t.json").read_text())["router"] == found["router"]
    with pytest.raises(ConfigError, match="rates"):
        rate_thresholds([res], [1.5])
