"""Chaos: 2 shards x 2 replicas of real ``cbir serve-shard`` processes; a steady stream of
vector queries while replicas are SIGKILLed and restarted one at a time. Every query must
succeed with a complete, exact answer."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

from tests.reliability.cluster import (
    Coordinator,
    QueryLoad,
    ShardProcess,
    Version,
    query_pool,
    start_replicas,
)

MIN_QUERIES = 2000

pytestmark = pytest.mark.slow


def chaos(replicas: list[list[ShardProcess]], stop: threading.Event, kills: list[str]) -> None:
    """Kill one replica, restart it on its port, wait until it serves, then the next one:
    never both replicas of a shard at once."""
    for replica in itertools.cycle([r for row in zip(*replicas, strict=True) for r in row]):
        if stop.is_set():
            return
        replica.kill()
        kills.append(replica.address)
        time.sleep(0.3)  # queries hit the dead port meanwhile
        replica.start()
        replica.wait_serving()
        time.sleep(0.5)


def test_sigkill_replicas_under_load(glove_v1: Version, tmp_path: Path) -> None:
    replicas = start_replicas(lambda s: ShardProcess(s, ["--index", glove_v1.root], tmp_path))
    coordinator = Coordinator(replicas)
    stop, kills = threading.Event(), list[str]()
    killer = threading.Thread(target=chaos, args=(replicas, stop, kills), daemon=True)
    try:
        with QueryLoad(coordinator.port, query_pool([glove_v1], 300), [glove_v1]) as load:
            load.wait_for(100)
            killer.start()
            load.wait_for(MIN_QUERIES)
            while len(kills) < 4 and killer.is_alive():  # every replica killed at least once
                time.sleep(0.1)
            stop.set()
            killer.join(90)
        report = load.report
        retries = coordinator.metric("cbir_coordinator_shard_retries_total")
        ejections = coordinator.metric("cbir_coordinator_replica_ejections_total")
        print(f"\nchaos: queries={report.queries} failed={report.failed} "
              f"partial={report.partial} wrong={report.wrong} kills={len(kills)} "
              f"restarts={sum(r.starts - 1 for row in replicas for r in row)} "
              f"retries={retries:.0f} ejections={ejections:.0f}")
        assert report.queries >= MIN_QUERIES
        assert len(kills) >= 4
        assert report.failed == 0, report.errors[:5]
        assert report.partial == 0, report.errors[:5]
        assert report.wrong == 0, report.errors[:5]
        assert retries > 0  # the kills were felt, and absorbed by retries
    finally:
        stop.set()
        coordinator.close()
        for row in replicas:
            for r in row:
                r.stop()
