"""Per-replica metric series are dropped with the replica (pod churn must not grow them)."""

from __future__ import annotations

import asyncio

from coordinator.config import CoordinatorConfig
from coordinator.fanout import Fanout
from coordinator.metrics import CoordinatorMetrics


def _series(metrics: CoordinatorMetrics, name: str) -> set[tuple[str, str]]:
    return {
        (s.labels["shard"], s.labels["replica"])
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == name
    }


def test_removed_replicas_leave_no_per_replica_series() -> None:
    async def scenario() -> None:
        metrics = CoordinatorMetrics()
        fanout = Fanout(CoordinatorConfig(num_shards=1, port=0), metrics)
        fanout.update_topology({0: ("127.0.0.1:1", "127.0.0.1:2")})
        metrics.ejections.labels("0", "127.0.0.1:1").inc()
        assert ("0", "127.0.0.1:1") in _series(metrics, "cbir_coordinator_replica_ejections_total")
        fanout.update_topology({0: ("127.0.0.1:2", "127.0.0.1:3")})  # :1 left, :3 joined
        assert _series(metrics, "cbir_coordinator_replica_ejections_total") == set()
        assert _series(metrics, "cbir_coordinator_replica_in_flight") == {
            ("0", "127.0.0.1:2"), ("0", "127.0.0.1:3")}
        await fanout.close()

    asyncio.run(scenario())
