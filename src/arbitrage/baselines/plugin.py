"""The baselines' plugin: the `specreason` policy and the `assisted` runner."""

from __future__ import annotations


def _assisted(cfg, models):
    from .assisted import AssistedRunner

    return AssistedRunner(cfg, models.draft, models.target)


def _assisted_metrics(m: dict) -> None:
    """No step-level choice (every token is the target's greedy token): no escalation rate; the share of the
    draft's proposed tokens the target accepted instead."""
    proposed = m["draft_calls"]
    m["escalation_rate"] = None
    m["token_acceptance_rate"] = m["draft_tokens_accepted"] / proposed if proposed else 0.0


def _assisted_check(cfg) -> None:
    from ..errors import ConfigError
    from ..factory import is_url

    if any(is_url(cfg.models.get(r) or "") for r in ("draft", "target")):
        raise ConfigError("the assisted baseline runs in-process models only (draft and target are servers)")
    if cfg.model_options.temperature > 0:
        raise ConfigError("the assisted-generation baseline is greedy only (lossless); use --temperature 0")


def register(registry) -> None:
    from .specreason import SpecReason  # the assisted runner (torch) is imported only when it runs
    from .training_free import POLICIES

    registry.add_policy(SpecReason)
    for cls in POLICIES:
        registry.add_policy(cls)
    registry.add_runner(
        "assisted",
        {"draft", "target"},
        _assisted,
        metrics=_assisted_metrics,
        check=_assisted_check,
        summary="token-level speculative decoding (transformers assisted generation), lossless",
    )
