"""``cbir serve-shard --workers 2 --metrics-port P`` as a real process tree: ONE endpoint on P
counts every search whichever worker answered it, keeps the counts of a SIGKILLed worker and
of the survivor across the restart, and shows gauges once (not per worker pid)."""

from __future__ import annotations

import os
import signal
import socket
import urllib.request
from collections.abc import Iterator

import pytest

from cbir.rpc.health import wait_serving
from tests.shard_server.conftest import BuiltIndex
from tests.shard_server.test_workers import _pids, _search, _spawn, _stop, _until

SEARCHES = 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> list[tuple[str, float]]:
    """(series, value) of every sample on the endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return [(line.rsplit(" ", 1)[0], float(line.rsplit(" ", 1)[1]))
            for line in text.decode().splitlines() if line and not line.startswith("#")]


def searches_counted(port: int) -> float:
    return sum(value for series, value in scrape(port)
               if series.startswith("cbir_shard_requests_total{") and 'method="Search"' in series)


@pytest.fixture()
def served(flat_index: BuiltIndex) -> Iterator[tuple[str, int]]:
    metrics = _free_port()
    proc = _spawn("--index", flat_index.root, "--shard", "0", "--port", "0", "--workers", "2",
                  "--metrics-port", str(metrics), "--drain-seconds", "1")
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip().split(" ")[-1]
        wait_serving(address, timeout_s=90)
        _until("both workers serving", lambda: len(_pids(address)) == 2, timeout_s=30)
        yield address, metrics
    finally:
        _stop(proc)


def test_one_endpoint_counts_the_searches_of_both_workers(
        served: tuple[str, int], flat_index: BuiltIndex) -> None:
    address, metrics = served
    query = flat_index.vectors[flat_index.shard_rows(0)[:1]]
    answered_by: set[int] = set()
    for _ in range(SEARCHES):  # a new connection each: the kernel spreads them
        _search(address, query)
        answered_by |= _pids(address, 1)
    assert len(answered_by) == 2  # both workers answered (all on one: 2^-19)
    assert searches_counted(metrics) == SEARCHES
    vectors = [value for series, value in scrape(metrics)
               if series.startswith("cbir_shard_index_vectors")]
    assert vectors == [float(len(flat_index.shard_rows(0)))]  # once, not per worker pid
    info = [series for series, value in scrape(metrics)
            if series.startswith("cbir_shard_index_info") and value == 1]
    assert len(info) == 1 and 'shard="0"' in info[0], info


def test_a_killed_worker_keeps_the_counts_and_its_gauges_go(
        served: tuple[str, int], flat_index: BuiltIndex) -> None:
    address, metrics = served
    query = flat_index.vectors[flat_index.shard_rows(0)[:1]]
    for _ in range(SEARCHES):
        _search(address, query)
    before = _pids(address)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    _until("a replacement worker",
           lambda: (now := _pids(address, 8)) and len(now) == 2 and victim not in now)
    assert searches_counted(metrics) == SEARCHES  # the dead one's and the survivor's
    for _ in range(SEARCHES):
        _search(address, query)
    assert searches_counted(metrics) == 2 * SEARCHES
    seen = scrape(metrics)
    vectors = [series for series, _ in seen if series.startswith("cbir_shard_index_vectors")]
    assert len(vectors) == 1, vectors
    # The parent's per-slot figures: one slot restarted once, both live and resident.
    restarts = sorted(v for s, v in seen if s.startswith("cbir_worker_restarts_total{"))
    assert restarts == [0, 1], seen
    resident = [v for s, v in seen if s.startswith("cbir_worker_resident_memory_bytes{")]
    assert len(resident) == 2 and min(resident) > 10 * 2**20, resident


def test_metrics_port_in_use_is_refused_with_exit_2(flat_index: BuiltIndex) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = _spawn("--index", flat_index.root, "--shard", "0", "--port", "0",
                      "--workers", "2", "--metrics-port", str(taken.getsockname()[1]))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "error:" in err, err
