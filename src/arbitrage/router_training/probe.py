"""Probe routers (beyond the paper): a logistic regression on features the draft computed while writing its
step (see `features`). Trained in seconds; at run time it costs no model call.

A probe router is a directory with `arbitrage_router.json` (kind "probe": feature groups, standardization and
weights, training figures). Everything is plain JSON, so loading one runs no pickled code; prediction is numpy.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError, ModelLoadError
from ..formats import ROUTER_META, read_router_meta, write_router_meta
from ..types import RouteRequest
from .dataset import class_counts, data_file, load_examples, read_meta
from .features import DEFAULT_GROUPS, GROUPS, feature_matrix, feature_names

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def is_probe_router(path: str) -> bool:
    meta = read_router_meta(path) if os.path.isdir(os.path.expanduser(path)) else None
    return bool(meta) and meta.get("kind") == "probe"


class ProbeRouter:
    """Router protocol over a trained probe: y_hat = sigmoid(w . standardized(features) + b)."""

    def __init__(self, meta: dict, name: str = "router"):
        self.name, self.meta = name, meta
        try:
            self.groups = list(meta["feature_groups"])
            self.hidden_dim = int(meta.get("hidden_dim", 0))
            self.mean = np.asarray(meta["mean"], dtype=np.float64)
            self.scale = np.asarray(meta["scale"], dtype=np.float64)
            self.coef = np.asarray(meta["coef"], dtype=np.float64)
            self.intercept = float(meta["intercept"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"probe router metadata is incomplete ({exc})") from exc
        n = len(feature_names(self.groups, self.hidden_dim))
        if not (self.mean.shape == self.scale.shape == self.coef.shape == (n,)):
            raise ModelLoadError(f"probe router weights have {self.coef.shape} values for {n} features")
        # What the router reads from the draft's step: the factory asks the draft for its hidden state if needed.
        self.draft_features = frozenset({"last_hidden"} if "hidden" in self.groups else set())

    def logits(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean) / self.scale) @ self.coef + self.intercept

    def predict_features(self, X: np.ndarray) -> list[float]:
        return (1.0 / (1.0 + np.exp(-self.logits(X)))).tolist()

    def predict(self, requests: Sequence[RouteRequest]) -> list[float]:
        if not requests:
            return []
        X = feature_matrix([r.draft for r in requests], [[s.author for s in r.steps] for r in requests],
                           self.groups, self.hidden_dim)
        return self.predict_features(X)

    def release(self, key: str) -> None:
        """Nothing is kept per problem."""


def load_probe_router(path: str, name: str = "router") -> ProbeRouter:
    meta = read_router_meta(path)
    if not meta or meta.get("kind") != "probe":
        raise ModelLoadError(f"{path!r} is not a probe router (no {ROUTER_META} with kind 'probe')")
    return ProbeRouter(meta, name=name)


def _matrix(examples, groups, hidden_dim) -> np.ndarray:
    return feature_matrix([e.draft_step() for e in examples], [[h["author"] for h in e.history] for e in examples],
                          groups, hidden_dim)


def _choose_c(Z: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> tuple[float, dict]:
    """Inverse regularization strength by ROC-AUC in grouped (by problem) cross-validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    n_groups = len(set(groups.tolist()))
    if n_groups < 3:
        return 1.0, {}
    folds = list(GroupKFold(n_splits=min(5, n_groups)).split(Z, y, groups))
    scores = {}
    for c in C_GRID:
        aucs = []
        for tr, te in folds:
            if len(set(y[tr].tolist())) < 2 or len(set(y[te].tolist())) < 2:
                continue
            m = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed).fit(Z[tr], y[tr])
            aucs.append(roc_auc_score(y[te], m.decision_function(Z[te])))
        if aucs:
            scores[c] = float(np.mean(aucs))
    if not scores:
        return 1.0, {}
    return max(scores, key=lambda c: (scores[c], -c)), {str(c): round(s, 4) for c, s in scores.items()}


def _blas_threads(n: int | None):
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    return threadpool_limits(n) if n else nullcontext()


def train_probe(data_dir: str, out_dir: str, seed: int = 0, *, features: Sequence[str] | None = None,
                C: float | None = None, shuffle_labels: bool = False, log: Callable[[str], None] = print) -> str:
    """Fit the probe on DATA/train.jsonl and save it to OUT. Returns OUT."""
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    data_meta = read_meta(data_dir)
    groups = list(features) if features else [g for g in DEFAULT_GROUPS
                                                 if g == "shape" or g in data_meta.get("draft_features", [g])]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise ConfigError(f"unknown probe feature group(s) {bad}; choose from {', '.join(GROUPS)}")
    examples = load_examples(data_file(data_dir, "train"))
    if not examples:
        raise DataError(f"{data_dir}: the training split is empty")
    hidden_dim = 0
    if "hidden" in groups:
        dims = {len(e.draft.get("last_hidden") or []) for e in examples}
        if 0 in dims or len(dims) != 1:
            raise DataError("--probe-features hidden needs the draft's last hidden state on every step (run "
                            "`generate` with the draft's hidden states on)")
        hidden_dim = dims.pop()
    X = _matrix(examples, groups, hidden_dim)
    y = np.asarray([e.label for e in examples])
    if shuffle_labels:  # the control: same features, labels permuted at random
        y = np.random.default_rng(seed).permutation(y)
    if len(set(y.tolist())) < 2:
        raise DataError(f"{data_dir}: the training split has one class only ({class_counts(examples)}); a router "
                        f"needs both escalate and keep examples")
    mean = X.mean(0)
    scale = X.std(0)
    scale[scale < 1e-12] = 1.0
    Z = (X - mean) / scale
    cv = {}
    # On small problems BLAS threads only spin against each other (10x slower on a busy 2-core machine).
    with _blas_threads(1 if Z.size < 2_000_000 else None):
        if C is None:
            C, cv = _choose_c(Z, y, np.asarray([e.problem_id for e in examples]), seed)
        model = LogisticRegression(C=C, max_iter=5000, class_weight="balanced", random_state=seed).fit(Z, y)
    seconds = time.perf_counter() - t0
    meta = {"kind": "probe", "model": "logistic", "feature_groups": groups, "hidden_dim": hidden_dim,
            "features": feature_names(groups, hidden_dim), "mean": mean.tolist(), "scale": scale.tolist(),
            "coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0]), "C": C, "cv_auc": cv,
            "separator": data_meta.get("separator", "\n\n"), "author_tags": data_meta.get("author_tags", True),
            "margin": data_meta.get("margin", 0.0), "data": os.path.abspath(data_dir), "seed": seed,
            "shuffled_labels": shuffle_labels, "train_counts": class_counts(examples),
            "train_seconds": round(seconds, 3)}
    write_router_meta(out_dir, meta)
    log(f"probe router: {X.shape[0]} examples, {X.shape[1]} features ({', '.join(groups)}), C={C}, "
        f"trained in {seconds:.2f} s -> {out_dir}")
    return out_dir
