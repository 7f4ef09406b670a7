"""The server's Prometheus metrics (one registry per app, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "arbitrage_requests",
            "Completion requests answered, by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=r,
        )
        self.in_flight = Gauge(
            "arbitrage_requests_in_flight", "Problems in the engine (running or waiting)", registry=r
        )
        self.steps = Counter("arbitrage_steps", "Accepted steps, by the model that wrote them", ["author"], registry=r)
        self.escalations = Counter("arbitrage_escalations", "Steps the policy escalated to the target", registry=r)
        self.tokens = Counter("arbitrage_tokens", "Tokens written, by model", ["model"], registry=r)
        self.discarded = Counter("arbitrage_discarded_draft_tokens", "Draft tokens written and thrown away", registry=r)
        self.call_seconds = Histogram(
            "arbitrage_model_call_seconds",
            "Wall time of one batched model call",
            ["role"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.call_batch = Histogram(
            "arbitrage_model_call_batch_size",
            "Requests per batched model call",
            ["role"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.speculation = Counter(
            "arbitrage_speculation_tokens",
            "Draft tokens in target-written steps: proposed "
            "(the rejected step, verified), kept (of those), speculated (proposed inside the "
            "step), accepted (of those)",
            ["kind"],
            registry=r,
        )
        self.target_forwards = Counter("arbitrage_target_forwards", "Target forward passes writing steps", registry=r)
        self.request_seconds = Histogram(
            "arbitrage_request_seconds", "End-to-end latency of a problem", buckets=CALL_BUCKETS, registry=r
        )

    def on_call(self, role: str, batch: int, t0: float, t1: float) -> None:
        self.call_seconds.labels(role).observe(t1 - t0)
        self.call_batch.labels(role).observe(batch)

    def on_step(self, record) -> None:
        self.steps.labels(record.author).inc()
        if record.escalated:
            self.escalations.inc()
        self.discarded.inc(record.discarded_draft_tokens)

    def on_done(self, result) -> None:
        c = result.counts
        self.tokens.labels("draft").inc(c["draft_tokens_accepted"] + c["draft_tokens_discarded"])
        self.tokens.labels("target").inc(c["target_tokens"])
        for kind, key in (
            ("proposed", "spec_proposed"),
            ("kept", "spec_kept"),
            ("speculated", "spec_draft_speculated"),
            ("accepted", "spec_draft_accepted"),
        ):
            self.speculation.labels(kind).inc(c.get(key, 0))
        self.target_forwards.inc(c.get("spec_target_forwards", 0))
        self.request_seconds.observe(result.latency_s)
