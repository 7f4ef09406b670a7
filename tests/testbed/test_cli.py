"""`arbitrage testbed train|eval` on tiny specs, the shipped models, and a short `arbitrage demo --quick`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arbitrage.cli import main
from arbitrage.data import load_problems
from arbitrage.testbed.task import make_problems

TINY = [
    "--draft-spec",
    "32x1x1x64",
    "--target-spec",
    "32x1x2x64",
    "--steps",
    "3",
    "--batch-size",
    "4",
    "--warmup",
    "1",
    "--eval-n",
    "2",
]


@pytest.mark.slow
def test_train_runs_a_few_steps_and_writes_loadable_models_and_a_card(tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "m"
    assert main(["testbed", "train", "--out", str(out), *TINY]) == 0
    card = json.loads((out / "card.json").read_text())
    for role, layers in (("draft", 1), ("target", 2)):
        info = card["models"][role]
        assert info["spec"] == {"hidden": 32, "heads": 1, "layers": layers, "intermediate": 64}
        assert info["command"].startswith("arbitrage testbed train") and info["seed"] == 0
        assert info["train_config"]["steps"] == 3 and "torch" in info["environment"]
        assert 0.0 <= info["test"]["answer_accuracy"] <= 1.0 and "all" in info["test"]["step_accuracy"]
        model = AutoModelForCausalLM.from_pretrained(out / role)
        assert model.config.num_hidden_layers == layers
        tok = AutoTokenizer.from_pretrained(out / role)
        assert tok.convert_ids_to_tokens(tok("a = 1\n\n", add_special_tokens=False).input_ids)[-1] == "\n\n"
    # seeded: the same command gives the same weights
    again = tmp_path / "again"
    assert main(["testbed", "train", "--out", str(again), "--roles", "draft", "--no-eval", *TINY]) == 0
    a, b = load_file(out / "draft" / "model.safetensors"), load_file(again / "draft" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    capsys.readouterr()
    assert main(["testbed", "eval", "--models", str(out), "--n", "2", "--no-steps"]) == 0
    assert "answer acc" in capsys.readouterr().out


def test_data_command_writes_jsonl_that_loads_back(tmp_path, capsys):
    path = tmp_path / "test.jsonl"
    assert main(["testbed", "data", "--split", "validation", "--n", "12", "--seed", "2", "--out", str(path)]) == 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 12 and {"id", "question", "answer", "solution", "prompt"} <= set(rows[0])
    back = load_problems(str(path), id_field="id", template="{question}\n\n")
    ref = make_problems("validation", 12, seed=2)
    assert [(p.id, p.prompt, p.gold) for p in back] == [(p.id, p.prompt, p.gold) for p in ref]
    assert main(["testbed", "data", "--split", "nope"]) == 2
    assert "--split" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--roles", "drafty"], "--roles"),
        (["--draft-spec", "64x3x2x8"], "--draft-spec"),
        (["--steps", "0"], "--steps"),
    ],
)
def test_train_rejects_bad_options(tmp_path, capsys, args, message):
    assert main(["testbed", "train", "--out", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err


def test_shipped_models_fit_the_budget_and_carry_their_card():
    from arbitrage.testbed.evaluate import default_models_dir

    root = default_models_dir()
    card = json.loads((root / "card.json").read_text())
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total <= 20 * 2**20
    for role in ("draft", "target"):
        assert (root / role / "model.safetensors").is_file() and (root / role / "tokenizer.json").is_file()
        info = card["models"][role]
        assert info["command"].startswith("arbitrage testbed train") and "answer_accuracy" in info["test"]
    assert card["models"]["target"]["parameters"] >= 3 * card["models"]["draft"]["parameters"]
    # the paper's regime, as recorded on 500 held-out problems: target >= 0.75, draft >= 0.35 and >= half of it
    t, d = (card["models"][r]["test"] for r in ("target", "draft"))
    assert t["n"] >= 500 and t["answer_accuracy"] >= 0.75
    assert d["answer_accuracy"] >= 0.35 and d["answer_accuracy"] >= t["answer_accuracy"] / 2


def test_the_shipped_pair_loads_and_solves_as_its_card_says():
    """The shipped models load through their specs and, on held-out problems, the target solves most and the draft
    about half (greedy, a sample of the card's 500); chat prompts render as the task's own prompt."""
    from arbitrage.factory import ModelOptions, build_models
    from arbitrage.testbed.evaluate import answer_accuracy, default_models_dir, load_model
    from arbitrage.testbed.task import make_chains

    models = build_models(
        {"draft", "target"},
        {"draft": "testbed:draft", "target": "testbed:target"},
        ModelOptions(device="cpu", dtype="float32"),
    )
    assert models.draft.model.config.num_hidden_layers == 2 and models.target.model.config.num_hidden_layers == 12
    chains = make_chains("test", 60, 0)
    accs = {r: answer_accuracy(*load_model(default_models_dir(), r), chains) for r in ("draft", "target")}
    assert accs["target"] >= 0.75 and 0.25 <= accs["draft"] <= accs["target"] - 0.15
    tok = models.draft.tokenizer
    q = chains[0].question()
    assert tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False) == q + "\n\n"


@pytest.mark.slow
def test_demo_quick_completes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "demo.json").read_text())
    policies = [p["policy"] for p in summary["points"]]
    assert policies[:2] == ["draft", "target"] and {"rsd", "oracle", "router"} <= set(policies)
    assert all(p["n"] == 8 for p in summary["points"])
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    for p in summary["points"]:
        assert p["policy"] in printed
    for key in (
        "n_test",
        "draft_accuracy",
        "target_accuracy",
        "cost_ratio",
        "wasted_rsd_escalations",
        "router_vs_rsd",
        "router_vs_target",
    ):
        assert key in summary, key
    assert summary["n_test"] == 8 and 0 < summary["cost_ratio"] < 1
    for key in ("router_vs_rsd", "router_vs_target"):
        c = summary[key]
        assert set(c) >= {"speedup", "ci95", "accuracy"} and (c["speedup"] is not None or c["reason"])
    for w in summary["wasted_rsd_escalations"]["by_threshold"].values():
        assert w["escalations"] == sum(w[k] for k in ("both_right", "target_only", "draft_only", "both_wrong"))
    # every threshold came from the training side: the generate steps, at the asked rates
    found = json.loads((out / "thresholds.json").read_text())
    assert found["rates"] == [0.3] and found["found"]["n_problems"] == 24
    assert (out / "router" / "arbitrage_router.json").is_file() and "cost per token" in printed
    # re-running resumes: nothing is recomputed, the same figures come back
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    again = json.loads((out / "demo.json").read_text())
    assert [p["accuracy"] for p in again["points"]] == [p["accuracy"] for p in summary["points"]]
    assert Path(out / "sweep" / "sweep.json").is_file()
