"""Prometheus metrics of one server (its own registry, so that two apps in one process never share counts)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("dlforge_requests", "HTTP requests answered", ["model", "endpoint", "status"], registry=r)
        self.errors = Counter("dlforge_request_errors", "requests answered 4xx or 5xx", ["model", "endpoint", "status"],
                              registry=r)
        self.latency = Histogram("dlforge_request_seconds", "time to the response's first byte",
                                 ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Gauge("dlforge_queue_depth", "requests admitted and not yet answered, per model", ["model"],
                           registry=r)
        self.batch = Histogram("dlforge_batch_images", "images per forward pass of dynamic batching", ["model"],
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)

    def observe(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(model, endpoint, str(status)).inc()
        self.latency.labels(model, endpoint).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
