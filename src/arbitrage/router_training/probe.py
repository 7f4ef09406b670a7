"""Probe routers (beyond the paper): a logistic regression on features the draft computed while writing its
step (see `features`). Trained in seconds; at run time it costs no model call.

Variants: 2 classes (escalate or keep, the labels of build-data); 4 or 10 classes by quantiles of the advantage
(multinomial), or an ordinal model over those classes (heads.py); and a probe that decides after the draft's
first K tokens (`decide_after`), trained on the same records with the features of those K tokens only. For every
variant y_hat is the probability mass of the classes whose advantage lies above 0.

A probe router is a directory with `arbitrage_router.json` (kind "probe": feature groups, standardization and
weights, training figures). Everything is plain JSON, so loading one runs no pickled code; prediction is numpy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError, ModelLoadError
from ..formats import ROUTER_META, read_router_meta, write_router_meta
from ..types import DEFAULT_SEPARATOR, RouteRequest
from .dataset import class_counts, data_file, load_examples, read_meta
from .features import DEFAULT_GROUPS, GROUPS, feature_matrix, feature_names
from .heads import OrdinalLogit, class_edges, classes_of, positive_classes, y_hat_from_probs

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def is_probe_router(path: str) -> bool:
    meta = read_router_meta(path) if os.path.isdir(os.path.expanduser(path)) else None
    return bool(meta and meta.get("kind") == "probe")


class ProbeRouter:
    """Router protocol over a trained probe (see the module docstring for the variants)."""

    def __init__(self, meta: dict, name: str = "router"):
        self.name, self.meta = name, meta
        try:
            self.groups = list(meta["feature_groups"])
            self.hidden_dim = int(meta.get("hidden_dim", 0))
            self.mean = np.asarray(meta["mean"], dtype=np.float64)
            self.scale = np.asarray(meta["scale"], dtype=np.float64)
            self.model = meta.get("model", "logistic")
            self.coef = np.asarray(meta["coef"], dtype=np.float64)
            self.intercept = np.asarray(meta["intercept"], dtype=np.float64)
            self.n_classes = int(meta.get("n_classes", 2))
            self.positive = list(meta.get("positive_classes", [1]))
            self.edges = meta.get("edges")
            self.decide_after = meta.get("decide_after")
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"probe router metadata is incomplete ({exc})") from exc
        n = len(feature_names(self.groups, self.hidden_dim))
        width = self.coef.shape[-1] if self.coef.ndim else 0
        if not (self.mean.shape == self.scale.shape == (n,)) or width != n:
            raise ModelLoadError(f"probe router weights have {self.coef.shape} values for {n} features")
        # What the router reads from the draft's step: the factory asks the draft for its hidden state if needed.
        self.draft_features = frozenset({"last_hidden"} if "hidden" in self.groups else set())

    def features(self, drafts, histories) -> np.ndarray:
        X = feature_matrix(drafts, histories, self.groups, self.hidden_dim, self.decide_after)
        return (X - self.mean) / self.scale

    def class_probs(self, Z: np.ndarray) -> np.ndarray:
        """Per-class probabilities of standardized features."""
        if self.model == "logistic":
            p1 = 1.0 / (1.0 + np.exp(-(Z @ self.coef + float(self.intercept))))
            return np.stack([1 - p1, p1], axis=1)
        if self.model == "multinomial":
            logits = Z @ self.coef.T + self.intercept
            logits -= logits.max(axis=1, keepdims=True)
            e = np.exp(logits)
            return e / e.sum(axis=1, keepdims=True)
        ordinal = OrdinalLogit()
        ordinal.coef_, ordinal.thresholds_ = self.coef, self.intercept
        return ordinal.class_probs(Z)

    def predict_features(self, Z: np.ndarray) -> list[float]:
        return y_hat_from_probs(self.class_probs(Z), self.positive).tolist()

    def predict(self, requests: Sequence[RouteRequest]) -> list[float]:
        if not requests:
            return []
        return self.predict_features(
            self.features([r.draft for r in requests], [[s.author for s in r.steps] for r in requests])
        )

    def classify(self, requests: Sequence[RouteRequest]) -> list[int]:
        """The most probable class of each request (eval's per-class accuracy)."""
        Z = self.features([r.draft for r in requests], [[s.author for s in r.steps] for r in requests])
        return self.class_probs(Z).argmax(axis=1).tolist()

    def release(self, key: str) -> None:
        """Nothing is kept per problem."""


def load_probe_router(path: str, name: str = "router") -> ProbeRouter:
    meta = read_router_meta(path)
    if not meta or meta.get("kind") != "probe":
        raise ModelLoadError(f"{path!r} is not a probe router (no {ROUTER_META} with kind 'probe')")
    return ProbeRouter(meta, name=name)


def _matrix(examples, groups, hidden_dim, decide_after=None) -> np.ndarray:
    return feature_matrix(
        [e.draft_step() for e in examples],
        [[h["author"] for h in e.history] for e in examples],
        groups,
        hidden_dim,
        decide_after,
    )


def _fit(Z, y, C, seed, model: str, k: int):
    from sklearn.linear_model import LogisticRegression

    if model == "ordinal":
        counts = np.bincount(y, minlength=k)
        weights = (len(y) / (k * np.maximum(counts, 1)))[y]  # balanced, as class_weight="balanced" weighs
        return OrdinalLogit(C=C).fit(Z, y, k, weights)
    return LogisticRegression(C=C, max_iter=5000, class_weight="balanced", random_state=seed).fit(Z, y)


def _scores(fitted, Z, model: str, positive: list[int]) -> np.ndarray:
    if model == "ordinal":
        probs = fitted.class_probs(Z)
    else:
        probs = fitted.predict_proba(Z)
        full = np.zeros((len(Z), max(fitted.classes_) + 1))
        full[:, fitted.classes_] = probs
        probs = full
    return y_hat_from_probs(probs, positive)


def _choose_c(
    Z: np.ndarray,
    y: np.ndarray,
    binary: np.ndarray,
    groups: np.ndarray,
    seed: int,
    model: str,
    k: int,
    positive: list[int],
) -> tuple[float, dict]:
    """Inverse regularization strength by the ROC-AUC of y_hat for the escalate label, in grouped (by problem)
    cross-validation (the same criterion whatever the head)."""
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
            if len(set(y[tr].tolist())) < 2 or len(set(binary[te].tolist())) < 2:
                continue
            fitted = _fit(Z[tr], y[tr], c, seed, model, k)
            aucs.append(roc_auc_score(binary[te], _scores(fitted, Z[te], model, positive)))
        if aucs:
            scores[c] = float(np.mean(aucs))
    if not scores:
        return 1.0, {}
    return max(scores, key=lambda c: (scores[c], -c)), {str(c): round(s, 4) for c, s in scores.items()}


def _blas_threads(n: int | None):
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    return threadpool_limits(n) if n else nullcontext()


def train_probe(
    data_dir: str,
    out_dir: str,
    seed: int = 0,
    *,
    features: Sequence[str] | None = None,
    C: float | None = None,
    shuffle_labels: bool = False,
    classes: int = 2,
    ordinal: bool = False,
    decide_after: int | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Fit the probe on DATA/train.jsonl and save it to OUT. Returns OUT. `classes` 4 or 10 (and `ordinal`):
    classes by quantiles of the advantage on the training split; `decide_after`: features of the first K
    draft tokens only."""
    t0 = time.perf_counter()
    if classes < 2 or (ordinal and classes < 3):
        raise ConfigError("--classes must be at least 2 (and at least 3 with --ordinal)")
    if decide_after is not None and decide_after < 1:
        raise ConfigError("--decide-after must be at least 1 token")
    data_meta = read_meta(data_dir)
    groups = (
        list(features)
        if features
        else [g for g in DEFAULT_GROUPS if g == "shape" or g in data_meta.get("draft_features", [g])]
    )
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
            raise DataError(
                "--probe-features hidden needs the draft's last hidden state on every step (run "
                "`generate` with the draft's hidden states on)"
            )
        hidden_dim = dims.pop()
    X = _matrix(examples, groups, hidden_dim, decide_after)
    binary = np.asarray([e.label for e in examples])
    adv = np.asarray([e.advantage for e in examples])
    if classes == 2 and not ordinal:
        model, y, edges, positive, k = "logistic", binary.copy(), None, [1], 2
    else:
        edges = class_edges(adv, classes)
        y = classes_of(adv, edges)
        k = len(edges) + 1
        positive = positive_classes(adv, y, k)
        model = "ordinal" if ordinal else "multinomial"
        if k < classes:
            log(f"probe router: advantages tie at the quantiles: {k} classes instead of {classes}")
    if shuffle_labels:  # the control: same features, labels permuted at random
        perm = np.random.default_rng(seed).permutation(len(y))
        y, binary = y[perm], binary[perm]
    if len(set(y.tolist())) < 2:
        raise DataError(
            f"{data_dir}: the training split has one class only ({class_counts(examples)}); a router "
            f"needs both escalate and keep examples"
        )
    mean = X.mean(0)
    scale = X.std(0)
    scale[scale < 1e-12] = 1.0
    Z = (X - mean) / scale
    cv: dict = {}
    # On small problems BLAS threads only spin against each other (10x slower on a busy 2-core machine).
    with _blas_threads(1 if Z.size < 2_000_000 else None):
        if C is None:
            C, cv = _choose_c(Z, y, binary, np.asarray([e.problem_id for e in examples]), seed, model, k, positive)
        fitted = _fit(Z, y, C, seed, model, k)
    intercept: float | list[float]  # one for a binary head, one per class (or per class edge) otherwise
    if model == "logistic":
        coef, intercept = fitted.coef_[0].tolist(), float(fitted.intercept_[0])
    elif model == "multinomial":
        full_coef = np.zeros((k, Z.shape[1]))
        full_int = np.full(k, -1e9)  # a class absent from the training split gets no mass
        full_coef[fitted.classes_] = (
            fitted.coef_ if len(fitted.classes_) > 2 else np.stack([-fitted.coef_[0] / 2, fitted.coef_[0] / 2])
        )
        full_int[fitted.classes_] = (
            fitted.intercept_
            if len(fitted.classes_) > 2
            else np.array([-fitted.intercept_[0] / 2, fitted.intercept_[0] / 2])
        )
        coef, intercept = full_coef.tolist(), full_int.tolist()
    else:
        coef, intercept = fitted.coef_.tolist(), fitted.thresholds_.tolist()
    seconds = time.perf_counter() - t0
    meta = {
        "kind": "probe",
        "model": model,
        "n_classes": k,
        "requested_classes": classes,
        "edges": edges,
        "positive_classes": positive,
        "decide_after": decide_after,
        "feature_groups": groups,
        "hidden_dim": hidden_dim,
        "features": feature_names(groups, hidden_dim),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": coef,
        "intercept": intercept,
        "C": C,
        "cv_auc": cv,
        "separator": data_meta.get("separator", DEFAULT_SEPARATOR),
        "author_tags": data_meta.get("author_tags", True),
        "margin": data_meta.get("margin", 0.0),
        "label_from": data_meta.get("label_from", "mean"),
        "data": os.path.abspath(data_dir),
        "seed": seed,
        "shuffled_labels": shuffle_labels,
        "train_counts": class_counts(examples),
        "train_seconds": round(seconds, 3),
    }
    write_router_meta(out_dir, meta)
    what = model if model == "logistic" else f"{model}, {k} classes"
    after = f", deciding after {decide_after} tokens" if decide_after else ""
    log(
        f"probe router ({what}{after}): {X.shape[0]} examples, {X.shape[1]} features ({', '.join(groups)}), "
        f"C={C}, trained in {seconds:.2f} s -> {out_dir}"
    )
    return out_dir
