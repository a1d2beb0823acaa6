"""Prometheus metrics of the web server (its own registry, served at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from cbir.metrics_registry import server_registry


class WebMetrics:
    def __init__(self) -> None:
        self.registry = server_registry()
        self.requests = Counter(
            "cbir_web_requests", "HTTP requests by route template and status",
            ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "cbir_web_request_seconds", "HTTP request latency by route template",
            ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.partial = Counter(
            "cbir_web_partial_answers", "search answers missing at least one shard",
            registry=self.registry)
        self.thumb_cache_bytes = Gauge(
            "cbir_web_thumbnail_cache_bytes", "bytes held by the thumbnail cache",
            registry=self.registry)
        self.thumb_cache_hits = Counter(
            "cbir_web_thumbnail_cache_hits", "thumbnails served from the cache",
            registry=self.registry)
