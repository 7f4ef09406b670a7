"""The paper's router ablations: quantile class edges, the ordinal loss, y_hat from a multi-class head, several
target samples per step recorded and averaged into labels; and the paired statistics of evidence.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from arbitrage.engine import Engine, EngineConfig, Models
from arbitrage.policies import make_policy
from arbitrage.router_training.heads import OrdinalLogit, class_edges, classes_of, positive_classes, y_hat_from_probs
from arbitrage.testing.fakes import FakeGenerator, problems


def test_quantile_class_edges_and_ties():
    a = np.linspace(-1, 1, 101)
    edges = class_edges(a, 4)
    assert edges == pytest.approx([-0.5, 0.0, 0.5])
    c = classes_of(a, edges)
    assert np.bincount(c).tolist() == [26, 25, 25, 25] and c[0] == 0 and c[-1] == 3
    assert positive_classes(a, c, 4) == [2, 3]  # mean advantage above 0
    tied = np.array([0.0] * 80 + [0.5] * 10 + [-0.5] * 10)
    assert class_edges(tied, 10) == [-0.5, 0.0]  # ties at the quantiles merge: 3 classes, not 10
    assert classes_of([-0.5, 0.0, 0.2, 0.5], [-0.5, 0.0]).tolist() == [0, 1, 2, 2]


def test_y_hat_is_the_mass_of_the_positive_classes():
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])
    assert y_hat_from_probs(probs, [2, 3]).tolist() == pytest.approx([0.7, 0.2])
    assert y_hat_from_probs(probs[:, :2] / probs[:, :2].sum(1, keepdims=True), [1]).tolist() == pytest.approx(
        [2 / 3, 0.125]
    )


def test_ordinal_loss_gradient_and_fit():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    latent = X @ np.array([1.5, -1.0, 0.0]) + rng.logistic(size=300)
    y = np.digitize(latent, [-1.0, 0.5, 2.0])  # 4 ordered classes
    m = OrdinalLogit(C=10.0)
    params = rng.normal(size=3 + 1 + 2) * 0.3
    loss, grad = m.nll(params, X, y, 4)
    eps = 1e-6
    num = np.array(
        [
            (m.nll(params + eps * e, X, y, 4)[0] - m.nll(params - eps * e, X, y, 4)[0]) / (2 * eps)
            for e in np.eye(len(params))
        ]
    )
    assert grad == pytest.approx(num, rel=1e-4, abs=1e-4)  # the analytic gradient of the ordinal loss
    m.fit(X, y, 4)
    assert m.coef_[0] > 1.0 and m.coef_[1] < -0.5 and abs(m.coef_[2]) < 0.3
    assert np.all(np.diff(m.thresholds_) > 0)
    probs = m.class_probs(X)
    assert probs.sum(1) == pytest.approx(np.ones(300)) and (probs.argmax(1) == y).mean() > 0.4  # chance: ~0.25


def test_probe_heads_train_and_route(tmp_path):
    """2-class, 4-class, 10-class and ordinal probes on one data set: each loads as a router whose y_hat is the
    positive classes' mass, and eval reports per-class accuracy for the multi-class ones."""
    from arbitrage.router_training import build_data, evaluate_router, train_router
    from arbitrage.router_training.probe import load_probe_router

    fixture = __import__("pathlib").Path(__file__).parents[1] / "fixtures" / "router_generate.jsonl.gz"
    build_data([str(fixture)], str(tmp_path / "data"), seed=0)
    for classes, ordinal in ((2, False), (4, False), (10, False), (4, True)):
        out = tmp_path / f"r{classes}{'o' if ordinal else ''}"
        train_router(
            str(tmp_path / "data"), str(out), kind="probe", classes=classes, ordinal=ordinal, log=lambda *_: None
        )
        router = load_probe_router(str(out))
        meta = json.loads((out / "arbitrage_router.json").read_text())
        assert meta["model"] == ("logistic" if classes == 2 else "ordinal" if ordinal else "multinomial")
        m = evaluate_router(str(out), str(tmp_path / "data"))
        assert 0.0 <= m["y_hat_mean"] <= 1.0 and m["n"] > 0
        if classes > 2:
            assert len(meta["edges"]) == router.n_classes - 1 and meta["positive_classes"]
            assert m["n_classes"] == router.n_classes and set(m["per_class_accuracy"]) == {
                str(c) for c in range(router.n_classes)
            }


def test_generate_records_several_target_samples_and_labels_from_them(tmp_path):
    from arbitrage.records import ProblemRecord
    from arbitrage.router_training.dataset import examples_from_record

    class SampledTarget(FakeGenerator):
        def generate(self, requests):
            out = super().generate(requests)
            for r, g in zip(requests, out):
                g.text = f"t{len(r.steps)}s{r.sample}"
            return out

    class SampleScores:
        name = "prm"

        def score(self, requests):  # draft 0.5; target samples 0.2, 0.9, 0.4 in order
            return [
                [0.5 if c.author == "draft" else (0.2, 0.9, 0.4)[int(c.text[-1])] for c in r.candidates]
                for r in requests
            ]

        def release(self, key):
            pass

    probs = problems([3, 2])
    by_key = {p.id: p.meta["n_steps"] for p in probs}
    target = SampledTarget("target", by_key)
    done = []
    Engine(
        make_policy("generate", target_samples=3),
        Models(draft=FakeGenerator("draft", by_key), target=target, prm=SampleScores()),
        EngineConfig(concurrency=2),
    ).run(probs, done.append)
    assert target.n_requests == 3 * sum(len(r.steps) for r in done)  # three samples per step
    rec = done[0].records[0]
    assert [p.text for p in rec.target_samples] == ["t0s1", "t0s2"] and rec.target.text == "t0s0"
    assert rec.scores["prm_target"] == 0.2 and rec.scores["prm_target_max"] == 0.9
    assert rec.scores["prm_target_mean"] == pytest.approx(0.5) and rec.scores["prm_target_samples"] == [0.2, 0.9, 0.4]
    assert not rec.escalated and rec.author == "draft"  # the trajectory continues as with one sample (0.2 < 0.5)
    pr = ProblemRecord(
        "p0", "q", "1", "1", True, "", "generate", None, "eos", 0.1, {}, done[0].counts, "", done[0].records
    )
    pr = ProblemRecord.from_json(json.loads(json.dumps(pr.to_json())), "test")  # through the file layout
    labels = {how: [e.advantage for e in examples_from_record(pr, "t", 0.0, how)] for how in ("mean", "max", "first")}
    assert labels["first"][0] == pytest.approx(0.2 - 0.5)
    assert labels["max"][0] == pytest.approx(0.9 - 0.5)
    assert labels["mean"][0] == pytest.approx(0.5 - 0.5)


def test_matched_speedup_with_a_paired_bootstrap():
    from arbitrage import evidence

    rng = np.random.default_rng(1)
    n = 200
    correct_fast = rng.random(n) < 0.6
    a = evidence.Point("a@1", "a", 1.0, {str(i): (bool(correct_fast[i]), 1.0 + 0.1 * rng.random()) for i in range(n)})
    b = evidence.Point("b@1", "b", 1.0, {str(i): (bool(correct_fast[i]), 2.0 + 0.1 * rng.random()) for i in range(n)})
    m = evidence.matched([a], [b], n_boot=300, seed=0)
    assert m["speedup"] == pytest.approx(1.95, abs=0.1) and m["ci95"][0] > 1.8 and m["ci95"][1] < 2.1
    worse = evidence.Point("c", "c", None, {str(i): (False, 0.5) for i in range(n)})
    none = evidence.matched([worse], [b], relative_to_b_accuracy=-0.01, n_boot=50)
    assert none["speedup"] is None and "do not reach" in none["reason"]
    t = evidence.sign_test(a, worse)
    assert t["only_a"] == int(correct_fast.sum()) and t["only_b"] == 0 and t["p_value"] < 1e-6


@pytest.mark.parametrize("classes,ordinal", [(4, False), (4, True)])
def test_classifier_heads_train_and_route(tiny_dir, tmp_path, classes, ordinal):
    """The paper's classifier with 4 quantile classes (cross entropy) or an ordinal head (cumulative logits):
    it saves its edges and positive classes, loads as a router, and y_hat is the positive classes' mass."""
    import torch
    from router_results import synthetic_results

    from arbitrage.router_training import build_data, evaluate_router, train_router
    from arbitrage.scoring.hf import HFRouter

    build_data([synthetic_results(tmp_path / "results.jsonl")], str(tmp_path / "data"), val_fraction=0.25, seed=0)
    out = tmp_path / "router"
    train_router(
        str(tmp_path / "data"),
        str(out),
        kind="classifier",
        base=str(tiny_dir / "draft"),
        lr=5e-3,
        epochs=2,
        batch_size=8,
        device="cpu",
        classes=classes,
        ordinal=ordinal,
        log=lambda *_: None,
    )
    meta = json.loads((out / "arbitrage_router.json").read_text())
    assert meta["head"] == ("ordinal" if ordinal else "softmax") and meta["n_classes"] == len(meta["edges"]) + 1
    router = HFRouter.from_pretrained(str(out), device="cpu")
    from arbitrage.router_training.dataset import load_examples
    from arbitrage.router_training.evaluate import router_requests

    reqs = router_requests(load_examples(str(tmp_path / "data" / "validation.jsonl"))[:6])
    probs = router.class_probs(reqs)
    assert probs.shape == (6, meta["n_classes"]) and torch.allclose(probs.sum(-1), torch.ones(6), atol=1e-5)
    y = router.predict(reqs)
    assert y == pytest.approx(probs[:, meta["positive_classes"]].sum(-1).tolist())
    m = evaluate_router(str(out), str(tmp_path / "data"))
    assert m["n_classes"] == meta["n_classes"] and "per_class_accuracy" in m


def test_matched_within_a_point_of_the_targets_accuracy():
    """router vs target-only: the router's latency at the target's accuracy minus one point (interpolated on its
    frontier) against the target's own latency."""
    from arbitrage import evidence

    n = 100
    target = evidence.Point("target", "target", None, {str(i): (i < 90, 2.0) for i in range(n)})
    cheap = evidence.Point("r@0.5", "router", 0.5, {str(i): (i < 80, 1.0) for i in range(n)})
    dear = evidence.Point("r@0.1", "router", 0.1, {str(i): (i < 95, 1.5) for i in range(n)})
    m = evidence.matched([cheap, dear], [target], relative_to_b_accuracy=-0.01, n_boot=200)
    # at 0.89: 0.8 + (0.89 - 0.8) / (0.95 - 0.8) of the way from 1.0 s to 1.5 s = 1.3 s; target 2.0 s
    assert m["accuracy"] == pytest.approx(0.89) and m["speedup"] == pytest.approx(2.0 / 1.3)
    assert m["ci95"][0] <= m["speedup"] <= m["ci95"][1]


def test_a_lossless_method_above_the_asked_accuracy_is_compared_at_its_own_point():
    """target+speculation or assisted generation vs target-only: both single points at the same accuracy, above
    'the target's minus a point': the ratio is taken at the method's own (cheapest) point, not refused."""
    from arbitrage import evidence

    n = 100
    target = evidence.Point("target", "target", None, {str(i): (i < 90, 2.0) for i in range(n)})
    spec = evidence.Point("target+speculation", "target+speculation", None, {str(i): (i < 90, 0.8) for i in range(n)})
    m = evidence.matched([spec], [target], relative_to_b_accuracy=-0.01, n_boot=100)
    assert m["speedup"] == pytest.approx(2.5) and m["accuracy"] == pytest.approx(0.9)
    assert m["ci95"] == pytest.approx([2.5, 2.5])  # the latencies are constant: every resample agrees
    below = evidence.Point("d", "d", None, {str(i): (i < 50, 0.5) for i in range(n)})  # still refused below
    assert evidence.matched([below], [target], relative_to_b_accuracy=-0.01, n_boot=20)["speedup"] is None
