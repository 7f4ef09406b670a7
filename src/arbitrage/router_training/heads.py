"""Router heads beyond two classes (the paper's Table 1): classes by quantiles of the advantage Delta, an ordinal
(cumulative-logit) model, and the routing score y_hat read from any of them.

- `class_edges(advantages, k)`: the k-1 inner quantiles of Delta on the training split (ties merged, so fewer
  classes may come out); class of Delta = the number of edges below Delta (an edge closes its class).
- `positive_classes(...)`: the classes whose mean Delta on the training split is above 0 ("the target's step
  would be better").
- y_hat = the probability mass of the positive classes. For 2 classes this is P(escalate), as before.
- `OrdinalLogit`: P(class <= j) = sigmoid(theta_j - w.x), thresholds increasing, fitted by L-BFGS on the
  negative log-likelihood with an L2 penalty ||w||^2 / (2C), as scikit-learn's logistic regression weighs it.
"""

from __future__ import annotations

import numpy as np


def class_edges(advantages, k: int) -> list[float]:
    """Inner quantile edges of Delta for k classes (duplicates removed: heavy ties give fewer classes)."""
    if k < 2:
        raise ValueError("at least 2 classes")
    a = np.asarray(advantages, dtype=np.float64)
    qs = np.quantile(a, [i / k for i in range(1, k)], method="inverted_cdf")  # values of the data: ties stay tied
    edges: list[float] = []
    for q in qs:
        if not edges or q > edges[-1] + 1e-12:
            edges.append(float(q))
    return edges


def classes_of(advantages, edges) -> np.ndarray:
    """Class index of each Delta: the number of edges below Delta (edges ascending; an edge value itself falls
    in the class it closes, so a tied minimum is a class of its own)."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(advantages, dtype=np.float64), side="left")


def positive_classes(advantages, classes, n_classes: int) -> list[int]:
    """Classes whose mean Delta (on the data given, the training split) is above 0."""
    a, c = np.asarray(advantages, dtype=np.float64), np.asarray(classes)
    return [j for j in range(n_classes) if (c == j).any() and float(a[c == j].mean()) > 0]


def y_hat_from_probs(probs: np.ndarray, positive: list[int]) -> np.ndarray:
    """The routing score: the probability mass of the positive classes, per row."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs[:, positive].sum(axis=1) if positive else np.zeros(len(probs))


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


class OrdinalLogit:
    """Cumulative-logit ordinal regression on standardized features (see the module docstring)."""

    def __init__(self, C: float = 1.0, max_iter: int = 2000):
        self.C, self.max_iter = C, max_iter
        self.coef_: np.ndarray | None = None
        self.thresholds_: np.ndarray | None = None

    @staticmethod
    def _unpack(params, d):
        w, t0, deltas = params[:d], params[d], params[d + 1 :]
        return w, np.concatenate([[t0], t0 + np.cumsum(np.exp(deltas))])

    @staticmethod
    def cumulative(X, w, theta) -> np.ndarray:
        """P(class <= j) for j = 0..K-2, per row."""
        return _sigmoid(theta[None, :] - (X @ w)[:, None])

    def class_probs(self, X) -> np.ndarray:
        cum = self.cumulative(np.asarray(X, float), self.coef_, self.thresholds_)
        cum = np.concatenate([np.zeros((len(cum), 1)), cum, np.ones((len(cum), 1))], axis=1)
        return np.clip(np.diff(cum, axis=1), 1e-12, 1.0)

    def nll(self, params, X, y, k, weights=None) -> tuple[float, np.ndarray]:
        """Penalised negative log-likelihood and its gradient (the ordinal loss)."""
        n, d = X.shape
        w, theta = self._unpack(params, d)
        z = X @ w
        ext = np.concatenate([[-np.inf], theta, [np.inf]])
        upper, lower = ext[y + 1] - z, ext[y] - z
        su, sl = _sigmoid(upper), _sigmoid(lower)
        p = np.clip(su - sl, 1e-12, 1.0)
        sw = np.ones(n) if weights is None else np.asarray(weights, float)
        loss = -float((sw * np.log(p)).sum()) + float(w @ w) / (2 * self.C)
        du = su * (1 - su)  # d sigmoid(upper) / d upper
        dl = sl * (1 - sl)
        g_common = sw * (du - dl) / p  # d log p / d(-z) ... sign handled below
        grad_w = (g_common[:, None] * X).sum(0) + w / self.C  # d(-log p)/dw = (du - dl)/p * x
        grad_theta = np.zeros(k - 1)
        for j in range(k - 1):  # theta_j is the upper bound of class j and the lower bound of class j+1
            grad_theta[j] = -float((sw * du / p)[y == j].sum()) + float((sw * dl / p)[y == j + 1].sum())
        # theta = t0 + cumsum(exp(delta)): chain rule to (t0, deltas)
        grad_t0 = grad_theta.sum()
        grad_deltas = np.array([grad_theta[j:].sum() * np.exp(params[d + j]) for j in range(1, k - 1)])
        return loss, np.concatenate([grad_w, [grad_t0], grad_deltas])

    def fit(self, X, y, k: int, weights=None) -> OrdinalLogit:
        from scipy.optimize import minimize

        X, y = np.asarray(X, float), np.asarray(y, int)
        d = X.shape[1]
        freq = np.cumsum(np.bincount(y, minlength=k))[:-1] / len(y)
        theta0 = np.log(np.clip(freq, 1e-3, 1 - 1e-3) / (1 - np.clip(freq, 1e-3, 1 - 1e-3)))
        theta0 = np.maximum.accumulate(theta0 + np.arange(k - 1) * 1e-3)
        x0 = np.concatenate([np.zeros(d), [theta0[0]], np.log(np.maximum(np.diff(theta0), 1e-3))])
        res = minimize(
            self.nll, x0, args=(X, y, k, weights), jac=True, method="L-BFGS-B", options={"maxiter": self.max_iter}
        )
        self.coef_, self.thresholds_ = self._unpack(res.x, d)
        return self
