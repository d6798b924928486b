"""Prometheus metrics of the server (``GET /metrics``), kept in a registry of their own per app so that
several apps in one process (tests) do not share counters."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# request latencies from a few ms (tiny models, GPU) to tens of seconds (GLIP-L on CPU)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    """The server's counters and histograms.

    Metrics (all prefixed ``openglip_``):
        ``requests_total{endpoint, status}``: answered requests by HTTP status.
        ``request_latency_seconds{endpoint}``: time from a request's arrival to its answer.
        ``errors_total{error}``: error answers by their ``error`` code (``timeout``, ``image_too_large``, ...).
        ``batch_size``: requests per model call (batches > 1 show that dynamic batching works).
        ``batch_inference_seconds``: time of each model call.
        ``queue_depth``: requests waiting for a batch, read when scraped.

    Args:
        max_batch: the largest batch, for the batch-size buckets.
        queue_depth: a function returning the current queue depth.
    """

    def __init__(self, max_batch: int, queue_depth=None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "openglip_requests",
            "Answered requests by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "openglip_request_latency_seconds",
            "Request latency (arrival to answer)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "openglip_errors", "Error answers by error code", ["error"], registry=self.registry
        )
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, max_batch})
        self.batch_size = Histogram(
            "openglip_batch_size",
            "Requests per model call",
            buckets=[s for s in sizes if s <= max_batch],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "openglip_batch_inference_seconds",
            "Duration of each model call",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "openglip_queue_depth", "Requests waiting for a batch", registry=self.registry
        )
        if queue_depth is not None:
            self.queue_depth.set_function(queue_depth)

    def observe_request(self, endpoint: str, status: int, seconds: float, error: str | None = None) -> None:
        """Count one answered request (and its error code when it failed)."""
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)
        if error is not None:
            self.errors.labels(error=error).inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one model call of ``size`` requests."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
