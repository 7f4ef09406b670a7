"""The points of the demo's sweep: which policies, thresholds, routers and engine settings it compares.

The default demo: draft, target, the oracle, and RSD, the probe router, confidence and glimpse at the thresholds
set on the training side, plus the router deciding after its first K tokens. `--evidence` adds what the full
evidence run compares: target-only with token-level speculation inside its steps, transformers' assisted
generation (token-level speculative decoding alone), the probe router reading the draft's hidden state, a
classifier router (the paper's kind), and every step policy once more with the target writing escalated steps
from scratch (no reuse of the draft's work), so each policy's gain from verification is measured in the same
run. Every point is an ordinary run directory; `labels` names each in the report.
"""

from __future__ import annotations

from pathlib import Path

from ..engine import EngineConfig
from ..run import RunConfig

THRESHOLDED = ("rsd", "router", "confidence", "glimpse")
NO_VERIFY = "-noverify"


def engine_config(concurrency: int, verify: bool = True) -> EngineConfig:
    # Steps are ~20 tokens and problems at most 5 steps; the limits only stop a model that loses the format.
    return EngineConfig(max_steps=10, max_step_tokens=48, max_total_tokens=320, concurrency=concurrency, verify=verify)


def build_points(cfg, out: Path, specs: dict, routers: dict, thresholds: dict, common: dict):
    """(base config, [(policy, tau)] on the base, extra point configs, {point dir: label})."""
    data = f"testbed:test:{cfg.n_test}"
    base = RunConfig(
        policy="draft",
        out=str(out / "sweep"),
        data=data,
        models={**specs, "router": routers["router"]},
        engine=engine_config(cfg.concurrency),
        **common,
    )
    points: list[tuple[str, float | None]] = [("draft", None), ("target", None), ("oracle", 0.0)]
    for policy in THRESHOLDED:
        points += [(policy, float(t)) for t in thresholds.get(policy, [])]
    extra: list[RunConfig] = []
    labels: dict[str, str] = {}

    def add(
        label: str,
        policy: str,
        tau: float | None,
        folder: str,
        models: dict,
        verify: bool = True,
        options: dict | None = None,
    ) -> None:
        name = policy if tau is None else f"{policy}-{tau:g}"
        c = RunConfig(
            policy=policy,
            threshold=tau,
            out=str(out / folder / name),
            data=data,
            models=models,
            engine=engine_config(cfg.concurrency, verify),
            policy_options=dict(options or {}),
            **common,
        )
        extra.append(c)
        labels[str(Path(c.out).resolve())] = label

    gen = {"draft": specs["draft"], "target": specs["target"]}
    if cfg.early_k:
        for t in thresholds.get("router-early", []):
            add(
                f"router-k{cfg.early_k}",
                "router",
                float(t),
                "sweep-early",
                {**gen, "router": routers["early"]},
                options={"decide_after": cfg.early_k},
            )
    if not cfg.evidence:
        return base, points, extra, labels
    add("target+speculation", "target", None, "sweep-extra", gen, options={"speculate": True})
    points.append(("assisted", None))
    for name in ("hidden", "classifier"):
        if name in routers:
            for t in thresholds.get(f"router-{name}", []):
                add(f"router-{name}", "router", float(t), f"sweep-router-{name}", {**gen, "router": routers[name]})
    # every step policy once more without reusing the draft's work
    twins = [(p, t) for p, t in points if p not in ("draft", "target", "assisted")]
    for policy, tau in twins:
        models = {r: v for r, v in base.models.items() if v}
        add(policy + NO_VERIFY, policy, tau, "sweep-noverify", models, verify=False)
    for c in list(extra):
        label = labels[str(Path(c.out).resolve())]
        if c.engine.verify and label.startswith(("router-k", "router-hidden", "router-classifier")):
            add(
                label + NO_VERIFY,
                "router",
                c.threshold,
                "sweep-noverify-" + label,
                dict(c.models),
                verify=False,
                options=dict(c.policy_options),
            )
    return base, points, extra, labels


def relabel(metrics: list[dict], out_dir: Path, labels: dict[str, str]) -> None:
    """Name each extra point's policy by its label (e.g. router-k2, rsd-noverify) for the report."""
    for m in metrics:
        label = labels.get(str((out_dir / m["dir"]).resolve()))
        if label:
            m["policy"] = label


__all__ = ["THRESHOLDED", "NO_VERIFY", "build_points", "engine_config", "relabel"]
