"""Judging a router on held-out steps (docs/method.md, "Router training" step 5).

The router is loaded exactly as `arbitrage run --policy router --router DIR` loads it (factory.load_model)
and fed the same `RouteRequest`s the engine would build, so the figures describe the deployed router.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import DataError
from ..types import DEFAULT_SEPARATOR, RouteRequest
from .dataset import Example, data_file, load_examples, read_meta


def router_requests(examples: Sequence[Example]) -> list[RouteRequest]:
    return [
        RouteRequest(key=f"{e.problem_id}#{e.index}", question=e.question, steps=e.steps(), draft=e.draft_step())
        for e in examples
    ]


def predict(router, examples: Sequence[Example], batch_size: int = 16) -> list[float]:
    """y_hat for every example, in batches of similar length (less padding for model routers)."""
    reqs = router_requests(examples)
    order = sorted(
        range(len(reqs)),
        key=lambda i: len(reqs[i].question) + sum(len(s.text) for s in reqs[i].steps) + len(reqs[i].draft.text),
    )
    out = [0.0] * len(reqs)
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        for i, p in zip(idx, router.predict([reqs[i] for i in idx])):
            out[i] = float(p)
        for i in idx:
            router.release(reqs[i].key)
    return out


def _rate(mask: np.ndarray, of: np.ndarray) -> float | None:
    return float(mask[of].mean()) if of.any() else None


def metrics(
    y_hat: Sequence[float], advantage: Sequence[float], labels: Sequence[int], tau: float = 0.5, oracle_tau: float = 0.0
) -> dict:
    """Spearman(y_hat, A), ROC-AUC of y_hat for the label, accuracy per class at `tau` (escalate iff y_hat > tau),
    and agreement with the oracle's decision (escalate iff A > oracle_tau)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    p, a, y = np.asarray(y_hat, float), np.asarray(advantage, float), np.asarray(labels, int)
    if p.size == 0:
        raise DataError("no examples to evaluate")
    esc = p > tau
    oracle = a > oracle_tau
    sp = spearmanr(p, a) if np.ptp(p) > 0 and np.ptp(a) > 0 else None
    both = len(set(y.tolist())) == 2
    rho = float(sp[0]) if sp is not None else float("nan")
    return {
        "n": int(p.size),
        "escalate": int(y.sum()),
        "keep": int((1 - y).sum()),
        "spearman": rho,
        "spearman_p": float(sp[1]) if sp is not None else float("nan"),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "tau": tau,
        "escalation_rate": float(esc.mean()),
        "accuracy": float((esc == y.astype(bool)).mean()),
        "accuracy_escalate": _rate(esc, y == 1),
        "accuracy_keep": _rate(~esc, y == 0),
        "balanced_accuracy": float(np.mean([_rate(esc, y == 1), _rate(~esc, y == 0)])) if both else float("nan"),
        "oracle_tau": oracle_tau,
        "oracle_escalation_rate": float(oracle.mean()),
        "oracle_agreement": float((esc == oracle).mean()),
        "recall_of_oracle_escalations": _rate(esc, oracle),
        "precision_vs_oracle": _rate(oracle, esc),
        "y_hat_mean": float(p.mean()),
    }


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"
    return str(v)


ROWS = (
    ("examples (escalate / keep)", None),
    ("Spearman(y_hat, A)", "spearman"),
    ("  p-value", "spearman_p"),
    ("ROC-AUC", "roc_auc"),
    ("escalation rate at tau", "escalation_rate"),
    ("accuracy", "accuracy"),
    ("  on escalate steps", "accuracy_escalate"),
    ("  on keep steps", "accuracy_keep"),
    ("balanced accuracy", "balanced_accuracy"),
    ("oracle escalation rate", "oracle_escalation_rate"),
    ("agreement with oracle", "oracle_agreement"),
    ("  recall of oracle escalations", "recall_of_oracle_escalations"),
    ("  precision vs oracle", "precision_vs_oracle"),
)


def table(m: dict, title: str = "router evaluation") -> str:
    """A plain-text table of the figures (the CLI prints it with rich when rich is installed)."""
    lines = [f"{title}  (tau={m['tau']}, oracle tau={m['oracle_tau']})"]
    for label, key in ROWS:
        val = f"{m['n']} ({m['escalate']} / {m['keep']})" if key is None else _fmt(m.get(key))
        lines.append(f"  {label:<32} {val}")
    return "\n".join(lines)


def print_table(m: dict, title: str, file=None) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(table(m, title), file=file)
        return
    t = Table(title=f"{title}  (tau={m['tau']}, oracle tau={m['oracle_tau']})")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for label, key in ROWS:
        t.add_row(label, f"{m['n']} ({m['escalate']} / {m['keep']})" if key is None else _fmt(m.get(key)))
    Console(file=file).print(t)


def evaluate_router(
    router_dir: str,
    data_dir_or_file: str,
    tau: float = 0.5,
    out_json: str | None = None,
    *,
    oracle_tau: float = 0.0,
    device: str = "auto",
    batch_size: int = 16,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Figures of the router in ROUTER_DIR on DATA/validation.jsonl (or on a given examples file)."""
    from ..factory import ModelOptions, load_model

    path = data_file(data_dir_or_file, "validation")
    examples = load_examples(path)
    if not examples:
        raise DataError(f"{path}: no examples (was the data built with --val-fraction 0?)")
    data_dir = os.path.dirname(path)
    sep = read_meta(data_dir).get("separator", DEFAULT_SEPARATOR)
    router = load_model("router", router_dir, "router", ModelOptions(device=device, reuse_cache=False), sep)
    t0 = time.perf_counter()
    y_hat = predict(router, examples, batch_size)
    seconds = time.perf_counter() - t0
    m = metrics(y_hat, [e.advantage for e in examples], [e.label for e in examples], tau, oracle_tau)
    edges = getattr(router, "edges", None)
    if edges is not None and callable(getattr(router, "classify", None)):  # a multi-class head
        m.update(per_class_accuracy(router, examples, edges))
    if getattr(router, "decide_after", None):
        m["decide_after"] = router.decide_after
    m.update(
        {
            "router": os.path.abspath(router_dir),
            "data": os.path.abspath(path),
            "predict_seconds": round(seconds, 3),
            "ms_per_step": round(1000 * seconds / len(examples), 3),
        }
    )
    if out_json:
        os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
        with open(out_json, "w") as f:
            json.dump({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in m.items()}, f, indent=2)
    if log:
        log(table(m))
    return m


def per_class_accuracy(router, examples: Sequence[Example], edges) -> dict:
    """For a router with advantage classes: how often the most probable class is the true one, per class."""
    from .heads import classes_of

    truth = classes_of([e.advantage for e in examples], edges)
    pred = np.asarray(router.classify(router_requests(examples)))
    k = len(edges) + 1
    per = {str(c): (float((pred[truth == c] == c).mean()) if (truth == c).any() else None) for c in range(k)}
    return {
        "n_classes": k,
        "edges": list(edges),
        "class_accuracy": float((pred == truth).mean()),
        "per_class_accuracy": per,
        "class_counts": {str(c): int((truth == c).sum()) for c in range(k)},
    }


def decide_after_curve(
    data_dir: str, ks: Sequence[int | None], seed: int = 0, features=None, log: Callable[[str], None] | None = None
) -> list[dict]:
    """What deciding early costs in routing quality: for each K (None: the full step), a probe trained on the
    features of the draft's first K tokens (the same recipe and data), and its held-out Spearman and ROC-AUC."""
    import tempfile

    from .probe import train_probe

    rows = []
    for k in ks:
        with tempfile.TemporaryDirectory(prefix="arbitrage-k-") as out:
            train_probe(data_dir, out, seed, features=features, decide_after=k, log=lambda *_: None)
            m = evaluate_router(out, data_dir)
        rows.append(
            {
                "decide_after": k,
                "spearman": m["spearman"],
                "roc_auc": m["roc_auc"],
                "balanced_accuracy": m["balanced_accuracy"],
                "n": m["n"],
            }
        )
        if log:
            log(f"K={'full' if k is None else k}: Spearman {m['spearman']:.4f}, ROC-AUC {m['roc_auc']:.4f}")
    return rows
