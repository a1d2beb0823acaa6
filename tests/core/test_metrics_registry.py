"""Every server registry carries the process collectors (memory, CPU, open files, GC); the
``--workers N`` endpoint sums real spawned processes' metrics and drops a dead one's live
gauges."""

from __future__ import annotations

import multiprocessing
import os
import urllib.request

from prometheus_client import generate_latest

from cbir.metrics_registry import MULTIPROC_ENV, pooled_metrics, server_registry, worker_died
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


def _worker() -> None:
    """A spawned process under ``pooled_metrics``: its metrics go to the shared directory."""
    from prometheus_client import Counter, Gauge

    from cbir.metrics_registry import flag_only

    Counter("t_hits", "hits").inc(3)
    Gauge("t_in_flight", "calls", multiprocess_mode="livesum").set(5)
    info = Gauge("t_version_info", "1 for the version", ["v"], multiprocess_mode="livemax")
    flag_only(info, flag_only(info, None, ("a",)), ("b",))


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.decode().splitlines() if line.startswith("t_")}


def test_pooled_metrics_sums_processes_and_drops_dead_live_gauges() -> None:
    spawn = multiprocessing.get_context("spawn")
    with pooled_metrics(0, "127.0.0.1") as endpoint:
        assert endpoint is not None and endpoint.port
        port = endpoint.port
        path = os.environ[MULTIPROC_ENV]
        pids = []
        for _ in range(2):
            process = spawn.Process(target=_worker)
            process.start()
            process.join(60)
            assert process.exitcode == 0
            pids.append(process.pid)
        seen = _scrape(port)
        assert seen["t_hits_total"] == 6 and seen["t_in_flight"] == 10
        # An info gauge's old label reads 0, not 1 for ever (its file keeps removed children).
        assert seen['t_version_info{v="a"}'] == 0 and seen['t_version_info{v="b"}'] == 1
        worker_died(pids[0])
        seen = _scrape(port)
        assert seen["t_hits_total"] == 6 and seen["t_in_flight"] == 5  # counters stay
        assert "process_resident_memory_bytes" in urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert MULTIPROC_ENV not in os.environ and not os.path.exists(path)


def test_pooled_metrics_off_without_a_port() -> None:
    with pooled_metrics(None, "127.0.0.1") as endpoint:
        assert endpoint is None and MULTIPROC_ENV not in os.environ
