"""The server's own metrics, in a registry of their own per server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# The *_created series double the exposition for no use of ours. The switch
# is process-wide in prometheus_client.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Telemetry:
    """Counters and gauges about this server, exposed in Prometheus text format.

    Each server gets its own registry instead of prometheus_client's global
    one, so two servers in one process (as in tests) do not share counts.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.samples_accepted = Counter(
            "metricstore_samples_accepted_total",
            "Samples stored, by ingest path.",
            ["path"],
            registry=self.registry,
        )
        self.samples_rejected = Counter(
            "metricstore_samples_rejected_total",
            "Samples rejected with a reason, by ingest path.",
            ["path"],
            registry=self.registry,
        )
        self.ingest_busy = Counter(
            "metricstore_ingest_busy_total",
            "Batches answered with a busy error because the pipeline was full.",
            ["path"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "metricstore_http_requests_total",
            "HTTP requests served, by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "metricstore_http_request_duration_seconds",
            "Time to serve an HTTP request, by route.",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.websocket_connections = Gauge(
            "metricstore_websocket_connections",
            "Open WebSocket connections, by endpoint.",
            ["endpoint"],
            registry=self.registry,
        )
        self.feed_disconnects = Counter(
            "metricstore_feed_disconnects_total",
            "Subscribers disconnected for staying behind their feed buffer.",
            registry=self.registry,
        )
        self.stored_series = Gauge(
            "metricstore_series", "Series with samples in storage.", registry=self.registry
        )
        self.stored_samples = Gauge(
            "metricstore_raw_samples", "Raw samples in storage.", registry=self.registry
        )
        self.memory_bytes = Gauge(
            "metricstore_storage_memory_bytes",
            "Bytes of sample and index arrays held by the shards.",
            registry=self.registry,
        )

    def record_ingest(self, path: str, accepted: int, rejected: int) -> None:
        if accepted:
            self.samples_accepted.labels(path).inc(accepted)
        if rejected:
            self.samples_rejected.labels(path).inc(rejected)
