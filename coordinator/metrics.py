"""Prometheus metrics of one coordinator (own registry: several may live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cbir.metrics_registry import flag_only, server_registry


class CoordinatorMetrics:
    def __init__(self) -> None:
        self.registry = server_registry()
        r = self.registry
        self.requests = Counter(
            "cbir_coordinator_requests", "Search requests by query type and status code",
            ["query", "code"], registry=r,
        )
        self.latency = Histogram(
            "cbir_coordinator_request_seconds", "Search latency by query type and status code",
            ["query", "code"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        self.partial = Counter(
            "cbir_coordinator_partial_answers", "Answers missing at least one shard", registry=r
        )
        self.shard_failures = Counter(
            "cbir_coordinator_shard_failures", "Shards left out of an answer", ["shard"],
            registry=r,
        )
        self.in_flight = Gauge(
            "cbir_coordinator_replica_in_flight", "Calls in flight per replica",
            ["shard", "replica"], registry=r, multiprocess_mode="livesum",  # workers add up
        )
        self.ejections = Counter(
            "cbir_coordinator_replica_ejections", "Replicas taken out of rotation",
            ["shard", "replica"], registry=r,
        )
        self.retries = Counter(
            "cbir_coordinator_shard_retries", "Shard calls retried on another replica",
            ["shard"], registry=r,
        )
        self.hedges = Counter(
            "cbir_coordinator_hedged_calls", "Second calls sent to a slow shard", ["shard"],
            registry=r,
        )
        self.latency_probes = Counter(
            "cbir_coordinator_latency_probes",
            "Shadow copies of a call sent to a replica whose latency estimate was stale",
            ["shard"], registry=r,
        )
        self.batch_size = Histogram(
            "cbir_coordinator_shard_batch_queries", "Queries per batched shard call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r,
        )
        self.version_info = Gauge(
            "cbir_coordinator_index_version_info",
            "1 for the index version queries are pinned to (complete in every shard)",
            ["index_version"], registry=r, multiprocess_mode="livemax",
        )
        self._pinned: tuple[str, ...] | None = None
        self.version_retries = Counter(
            "cbir_coordinator_version_retries",
            "Shard calls re-sent because a replica did not hold the pinned index version",
            ["shard"], registry=r,
        )
        self.cache_lookups = cache_lookups(r)
        self.live_replicas = Gauge(
            "cbir_coordinator_live_replicas", "Replicas in rotation per shard", ["shard"],
            registry=r, multiprocess_mode="livemin",  # --workers N: the worst worker's view
        )

    def pin_version(self, version: str | None) -> None:
        """Publish the version queries are pinned to (None: none yet)."""
        self._pinned = flag_only(self.version_info, self._pinned,
                                 (version,) if version is not None else None)

    def requests_served(self) -> int:
        """Search requests answered so far, every query type and status code."""
        return int(sum(sample.value for metric in self.requests.collect()
                       for sample in metric.samples if sample.name.endswith("_total")))

    def serve(self, port: int, host: str) -> None:
        """Listen on the gRPC server's own host: a coordinator bound to 127.0.0.1 must not
        publish its metrics on every interface."""
        start_http_server(port, addr=host, registry=self.registry)


def cache_lookups(registry: CollectorRegistry) -> Counter:
    """Hits and misses of the coordinator's caches (coordinator.caching, docs/filters.md)."""
    return Counter("cbir_coordinator_cache_lookups",
                   "Cache lookups by cache (result | embedding) and result (hit | miss)",
                   ["cache", "result"], registry=registry)
