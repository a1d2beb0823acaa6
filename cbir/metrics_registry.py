"""Prometheus registries of the servers.

``server_registry``: each server's own registry (several servers may live in one process in
tests), with the standard process collectors in it, so every /metrics shows the process's
memory, CPU time and open files (``process_*``), its garbage collector (``python_gc_*``) and
Python version next to the server's own metrics.

``pooled_metrics``: the one endpoint of a ``--workers N`` server. prometheus_client's
multiprocess mode: the supervisor makes a fresh directory and names it in
``PROMETHEUS_MULTIPROC_DIR`` before it spawns the workers, so each worker's metrics are kept in
memory-mapped files there (one per process) instead of in the worker's memory; the supervisor
serves a ``MultiProcessCollector`` over the directory on ``--metrics-port``: counters and
histograms summed over every worker that ever ran (a restarted worker's predecessor included),
gauges by the ``multiprocess_mode`` each declares. ``worker_died`` drops a dead worker's
``live*`` gauges. ``process_*`` on that endpoint are the supervisor's own process (the
workers' process collectors are not in the files); per-worker memory is the container's
(cgroup) figure - shared index pages would be counted N times in a sum of RSS anyway - and
``WorkerCollector`` adds each worker's resident memory and restarts, labelled by worker slot.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def server_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@dataclass(frozen=True)
class PooledEndpoint:
    port: int  # the bound one (``--metrics-port 0`` picks a free port)
    registry: CollectorRegistry  # what it serves: add the supervisor's own collectors here


@contextlib.contextmanager
def pooled_metrics(port: int | None, host: str) -> Iterator[PooledEndpoint | None]:
    """While open: workers spawned now write their metrics to a fresh shared directory and
    ``host:port`` serves their sum (None = metrics off). At exit the endpoint closes and the
    directory goes."""
    if port is None:
        yield None
        return
    path = tempfile.mkdtemp(prefix="cbir-metrics-")
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    ProcessCollector(registry=registry)  # the supervisor's own process
    PlatformCollector(registry=registry)
    os.environ[MULTIPROC_ENV] = path  # inherited by the spawned workers
    try:
        http, _ = start_http_server(port, addr=host, registry=registry)
        try:
            bound = int(http.server_address[1])
            log.info("metrics of all workers on %s:%d (files in %s)", host, bound, path)
            yield PooledEndpoint(bound, registry)
        finally:
            http.shutdown()
            http.server_close()
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def worker_died(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters and histograms stay in the sum)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        mark_process_dead(pid, path)


def flag_only(gauge: Gauge, previous: tuple[str, ...] | None,
              labels: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """An ``*_info`` gauge: ``labels`` at 1, the ``previous`` label set gone; returns
    ``labels`` (the next call's ``previous``). Zeroed before it is removed: in multiprocess
    mode a removed child's value stays in the worker's file, and would read 1 for ever."""
    if previous is not None and previous != labels:
        gauge.labels(*previous).set(0)
        gauge.remove(*previous)
    if labels is not None:
        gauge.labels(*labels).set(1)
    return labels


# (slot, live pid or None, restarts so far) of each worker, from the supervisor.
WorkerStates = Callable[[], Iterable[tuple[int, int | None, int]]]


class WorkerCollector(Collector):
    """Per worker slot: resident memory of the live process (``/proc``; shared index pages
    are in every worker's figure) and restarts. The pooled files cannot carry these: a
    worker's process collector is not written to them."""

    def __init__(self, states: WorkerStates) -> None:
        self.states = states

    def collect(self) -> Iterable[Metric]:
        rss = GaugeMetricFamily("cbir_worker_resident_memory_bytes",
                                "Resident memory of each live worker process", labels=["worker"])
        restarts = CounterMetricFamily("cbir_worker_restarts",
                                       "Times a worker slot's process was replaced",
                                       labels=["worker"])
        for slot, pid, restarted in self.states():
            restarts.add_metric([str(slot)], restarted)
            resident = _resident_bytes(pid) if pid is not None else None
            if resident is not None:
                rss.add_metric([str(slot)], resident)
        return [rss, restarts]


def _resident_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # it just exited, or no /proc (not Linux)
        return None
