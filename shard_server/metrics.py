"""Prometheus metrics of one shard server (its own registry, so several servers can live in one
process - the tests run many)."""

from __future__ import annotations

from typing import Any, Final

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from cbir.metrics_registry import flag_only, server_registry
from shard_server.index_store import LoadedIndex

# Gauges under ``--workers N`` (one endpoint, cbir.metrics_registry.pooled_metrics): every worker
# loads the same index, so the largest live value is the pod's; a worker mid-roll lags briefly.
POOLED: Final = "livemax"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ShardMetrics:
    def __init__(self) -> None:
        self.registry = server_registry()
        self._http: Any = None
        self.requests = Counter(
            "cbir_shard_requests", "RPCs by method and status code", ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cbir_shard_request_seconds", "RPC latency by method and status code",
            ["method", "code"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.queries = Counter(
            "cbir_shard_queries", "query vectors searched", registry=self.registry
        )
        self.vectors = Gauge("cbir_shard_index_vectors", "vectors held", registry=self.registry,
                             multiprocess_mode=POOLED)
        self.memory = Gauge(
            "cbir_shard_index_bytes", "approximate index + id table size", registry=self.registry,
            multiprocess_mode=POOLED,  # the workers memory-map one copy: not a sum
        )
        self.version = Gauge(
            "cbir_shard_index_info", "1 for the serving index version", ["index_version", "shard"],
            registry=self.registry, multiprocess_mode=POOLED,
        )
        self.loads = Counter(
            "cbir_shard_index_loads", "index loads by trigger (start|rpc|pointer) and result",
            ["source", "result"], registry=self.registry,
        )
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._flags: dict[Gauge, tuple[str, ...] | None] = {}  # info gauge -> labels at 1
        self.pointer_errors = Counter(
            "cbir_shard_index_pointer_errors", "index pointer reads that failed",
            registry=self.registry,
        )
        self.pointer_target = Gauge(
            "cbir_shard_index_pointer_target_info",
            "1 for what the index pointer named at its last read", ["target"],
            registry=self.registry, multiprocess_mode=POOLED,
        )
        self.pointer_drift = Gauge(
            "cbir_shard_index_pointer_drift",
            "1 while the served index is not the pointer's target (refused or not loaded yet)",
            registry=self.registry, multiprocess_mode=POOLED,
        )
        self.serving_uri = Gauge(
            "cbir_shard_index_uri_info", "1 for the URI the serving index was loaded from",
            ["index_uri"], registry=self.registry, multiprocess_mode=POOLED,
        )

    def observe(self, method: str, code: str, seconds: float) -> None:
        # The labelled children are cached: ``labels()`` takes a lock and builds a key on every
        # call, which is measurable on a request path that costs a few hundred microseconds.
        children = self._children.get((method, code))
        if children is None:
            children = (self.requests.labels(method, code), self.latency.labels(method, code))
            self._children[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)

    def load_failed(self, source: str) -> None:
        self.loads.labels(source, "refused").inc()

    def index_loaded(self, loaded: LoadedIndex, source: str) -> None:
        self.loads.labels(source, "ok").inc()
        self.vectors.set(loaded.manifest.count)
        self.memory.set(loaded.memory_bytes)
        self._flag(self.version, loaded.version, str(loaded.manifest.shard))
        self._flag(self.serving_uri, loaded.uri)

    def pointer_read(self, target: str, serving_uri: str) -> None:
        """What the pointer names now, and whether this replica serves it."""
        self._flag(self.pointer_target, target)
        self.pointer_drift.set(0 if target == serving_uri else 1)

    def _flag(self, gauge: Gauge, *labels: str) -> None:
        self._flags[gauge] = flag_only(gauge, self._flags.get(gauge), labels)

    def serve(self, port: int, host: str) -> None:
        """Expose /metrics over HTTP (a daemon thread) until ``close``."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
