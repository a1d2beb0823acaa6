"""Each server's own Prometheus registry (several servers may live in one process in tests),
with the standard process collectors in it, so every /metrics shows the process's memory, CPU
time and open files (``process_*``), its garbage collector (``python_gc_*``) and Python version
next to the server's own metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector


def server_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
