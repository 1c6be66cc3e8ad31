"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own.

Each app gets its own ``CollectorRegistry`` (not prometheus-client's global one), so several apps
in one process (tests, benchmarks) do not collide. The cascade's early-exit fraction comes from
:func:`willow.cascades.runtime.early_exit_counts`, read in the batch thread around each call: the
rows that went through a cascade and those its approximate model answered.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class ServeMetrics:
    """The server's counters and histograms (prometheus-client, imported here, not by willow)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "willow_serve_requests", "Requests answered, by HTTP status.", ["status"], registry=r
        )
        self.rows = Counter(
            "willow_serve_rows", "Rows answered, by the tier that answered.", ["tier"], registry=r
        )
        self.tier_requests = Counter(
            "willow_serve_tier_requests",
            "Requests answered, by the tier that answered.",
            ["tier"],
            registry=r,
        )
        self.batch_rows = Histogram(
            "willow_serve_batch_rows", "Rows per pipeline call.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "willow_serve_batch_requests", "Requests per pipeline call.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_delay = Histogram(
            "willow_serve_queue_delay_seconds",
            "Time a request waited in the queue before its batch started.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "willow_serve_latency_seconds",
            "Request latency in the server (parsed JSON to answer).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_latency = Histogram(
            "willow_serve_batch_seconds",
            "Pipeline call latency per batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Gauge(
            "willow_serve_batch_size", "The adaptive batcher's current size (rows).", registry=r
        )
        self.current_tier = Gauge(
            "willow_serve_current_tier",
            "Accuracy target the scaler serves unpinned requests with.",
            registry=r,
        )
        self.cascade_rows = Counter(
            "willow_serve_cascade_rows", "Rows that went through a cascade's approximate model.", registry=r
        )
        self.early_exit_rows = Counter(
            "willow_serve_cascade_early_exit_rows",
            "Rows the cascade's approximate model answered (no full pipeline).",
            registry=r,
        )
        self.early_exit_fraction = Gauge(
            "willow_serve_cascade_early_exit_fraction",
            "Fraction of cascaded rows answered early, since the server started.",
            registry=r,
        )
        self._cascade_total = 0
        self._early_total = 0

    def batch(
        self, tier: str, rows: int, requests: int, queue_ms: list[float], service_ms: float, ok: bool
    ) -> None:
        """Record one batch (called by the batcher after it answered the batch's requests)."""
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.batch_latency.observe(service_ms / 1e3)
        for waited in queue_ms:
            self.queue_delay.observe(waited / 1e3)
        if ok:
            self.rows.labels(tier=tier).inc(rows)
            self.tier_requests.labels(tier=tier).inc(requests)

    def early_exits(self, cascaded: int, early: int) -> None:
        """Record a batch's cascade counts (rows through the approximate model, rows it answered)."""
        if cascaded:
            self.cascade_rows.inc(cascaded)
            self.early_exit_rows.inc(early)
            self._cascade_total += cascaded
            self._early_total += early
            self.early_exit_fraction.set(self._early_total / self._cascade_total)

    def state(self, batch_size: int, tier: float | None) -> None:
        self.batch_size.set(batch_size)
        if tier is not None:
            self.current_tier.set(tier)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def request(self, status: int, latency_s: Any = None) -> None:
        self.requests.labels(status=str(status)).inc()
        if latency_s is not None:
            self.latency.observe(latency_s)
