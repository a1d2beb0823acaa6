"""Every server registry carries the process collectors (memory, CPU, open files, GC)."""

from __future__ import annotations

from prometheus_client import generate_latest

from cbir.metrics_registry import server_registry
from coordinator.metrics import CoordinatorMetrics
from shard_server.metrics import ShardMetrics
from web.metrics import WebMetrics


def test_each_server_registry_exports_process_metrics() -> None:
    for registry in (server_registry(), CoordinatorMetrics().registry, ShardMetrics().registry,
                     WebMetrics().registry):
        text = generate_latest(registry).decode()
        for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                     "process_open_fds", "python_gc_objects_collected_total", "python_info"):
            assert name in text, name
