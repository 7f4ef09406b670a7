"""Router training (docs/method.md, "Router training"): `generate` results -> labelled, balanced examples ->
a trained router (the paper's token classifier, or a probe on the draft's own features) -> held-out figures.

    build_data(["runs/gen/results.jsonl"], "router-data")
    train_router("router-data", "router", kind="classifier", base="Qwen/Qwen2.5-Math-1.5B")
    evaluate_router("router", "router-data", tau=0.5)

The command line is `arbitrage router build-data | train | eval` (see `cli`).
"""

from __future__ import annotations

KINDS = ("classifier", "probe")


def build_data(
    results: list[str],
    out_dir: str,
    margin: float = 0.0,
    balance: bool = True,
    val_fraction: float = 0.2,
    seed: int = 0,
    **options,
) -> dict:
    """One example per step of the `generate` results files (or run directories); label 1[A > margin]; split by
    problem; balance the training split by seeded downsampling. Writes OUT/train.jsonl, OUT/validation.jsonl and
    OUT/meta.json; returns the class counts. `options`: separator (default: the run's), author_tags (True)."""
    from .dataset import build_data as _build

    return _build(
        results, out_dir, margin=margin, balance_train=balance, val_fraction=val_fraction, seed=seed, **options
    )


def train_router(
    data_dir: str, out_dir: str, kind: str = "classifier", base: str | None = None, seed: int = 0, **hyper
) -> str:
    """Train a router on DATA and save it to OUT (loadable by `arbitrage run --policy router --router OUT`).

    kind "classifier": fine-tune BASE as a 2-label token classifier (hyper: lr, epochs, batch_size, grad_accum,
    warmup, weight_decay, max_length, device, bf16, gradient_checkpointing, shuffle_labels, log).
    kind "probe": logistic regression on the draft's features (hyper: features, C, shuffle_labels, log)."""
    from ..errors import ConfigError

    if kind == "classifier":
        from .train import train_classifier

        return train_classifier(data_dir, out_dir, base, seed, **hyper)
    if kind == "probe":
        from .probe import train_probe

        if base:
            raise ConfigError("a probe router has no base model; leave --base out with --kind probe")
        return train_probe(data_dir, out_dir, seed, **hyper)
    raise ConfigError(f"unknown router kind {kind!r}; use {' or '.join(KINDS)}")


def evaluate_router(
    router_dir: str, data_dir_or_file: str, tau: float = 0.5, out_json: str | None = None, **options
) -> dict:
    """Spearman(y_hat, A), ROC-AUC, per-class accuracy at tau and agreement with the oracle on DATA's validation
    split (or an examples file). `options`: oracle_tau (0), device, batch_size, log."""
    from .evaluate import evaluate_router as _eval

    return _eval(router_dir, data_dir_or_file, tau, out_json, **options)


__all__ = ["KINDS", "build_data", "train_router", "evaluate_router"]
