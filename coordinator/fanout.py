"""Calls to the shards, composed of three parts each testable alone:

- ``ReplicaPool`` (coordinator.replica_pool): channels, the balancer, health probing, ejection,
  single attempts under the caller's deadline;
- ``VersionView`` (coordinator.version_view): the index version queries are pinned to and which
  replicas hold it;
- ``CallPolicy`` (coordinator.call_policy): one logical call - retries on another replica,
  hedging, shadow calls.

``Fanout`` wires them together for the search layer and the server's background loops.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TypeVar

import grpc

from coordinator.call_policy import RETRYABLE, CallPolicy, ShardCallFailed
from coordinator.config import CoordinatorConfig
from coordinator.metrics import CoordinatorMetrics
from coordinator.replica_pool import ReplicaPool, ShardCall
from coordinator.version_view import VersionView

T = TypeVar("T")

__all__ = ["RETRYABLE", "Fanout", "ShardCall", "ShardCallFailed"]


class Fanout:
    def __init__(self, config: CoordinatorConfig, metrics: CoordinatorMetrics,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.pool = ReplicaPool(config, metrics, rng)
        self.view = VersionView(self.pool)
        self.policy = CallPolicy(self.pool, config)
        self.balancers = self.pool.balancers
        self.replicas = self.pool.replicas
        self.versions = self.view.versions

    def update_topology(self, topology: Mapping[int, tuple[str, ...]]) -> None:
        for shard, address in self.pool.update_topology(topology):
            self.view.forget(shard, address)

    def pinned_version(self) -> str | None:
        return self.view.pinned_version()

    def holders(self, shard: int, version: str) -> set[str]:
        return self.view.holders(shard, version)

    async def poll_versions(self, timeout_s: float) -> None:
        await self.view.poll(timeout_s)

    async def probe_ejected(self) -> None:
        await self.pool.probe_ejected()

    def live_addresses(self) -> dict[int, list[str]]:
        return self.pool.live_addresses()

    def live_counts(self) -> dict[int, int]:
        return self.pool.live_counts()

    def attempt_budget_s(self, deadline: float) -> float:
        return self.pool.attempt_budget_s(deadline)

    def hedge_delay_s(self, shard: int) -> float | None:
        return self.policy.hedge_delay_s(shard)

    async def attempt(self, shard: int, address: str, fn: ShardCall[T], deadline: float) -> T:
        return await self.pool.attempt(shard, address, fn, deadline)

    async def call(
        self,
        shard: int,
        fn: ShardCall[T],
        deadline: float,
        retry_codes: frozenset[grpc.StatusCode] = RETRYABLE,
        prefer: set[str] | None = None,
    ) -> T:
        return await self.policy.call(shard, fn, deadline, retry_codes, prefer)

    async def close(self) -> None:
        self.policy.close()
        await self.pool.close()
