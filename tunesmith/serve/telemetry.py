"""GET /metrics: Prometheus text format (prometheus_client), one registry per app (tests run several)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Telemetry:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tunesmith_requests", "Requests answered", ["endpoint", "model", "status"], registry=r)
        self.latency = Histogram(
            "tunesmith_request_seconds",
            "Time from arrival to answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "tunesmith_batch_size",
            "Items (texts or prompts) per forward pass",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.errors = Counter("tunesmith_errors", "Requests answered with an error", ["endpoint", "kind"], registry=r)
        self.queue = Gauge("tunesmith_queue_depth", "Requests waiting per model", ["model"], registry=r)

    ENDPOINTS = frozenset(
        {"/v1/classify", "/v1/generate", "/v1/chat/completions", "/v1/models", "/healthz", "/metrics"}
    )

    def observe(self, endpoint: str, model: str, status: int, seconds: float | None, error: str | None = None) -> None:
        """`seconds` None: refused before the app (key, size, slow client): counted, but not a latency."""
        endpoint = endpoint if endpoint in self.ENDPOINTS else "other"  # a client's random paths add no series
        self.requests.labels(endpoint, model or "-", str(status)).inc()
        if seconds is not None:
            self.latency.labels(endpoint).observe(seconds)
        if error:
            self.errors.labels(endpoint, error).inc()

    def render(self, depths: dict[str, int]) -> bytes:
        for model, depth in depths.items():
            self.queue.labels(model).set(depth)
        return generate_latest(self.registry)
