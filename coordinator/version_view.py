"""Which index version queries are pinned to, from what the live replicas report holding
(the rule itself is pure: ``coordinator.versions``); and which replicas hold a version."""

from __future__ import annotations

import asyncio
import logging

import grpc

from coordinator.log_positions import LogPositions
from coordinator.replica_pool import ReplicaPool
from coordinator.versions import VersionTracker
from protos import cbir_pb2

log = logging.getLogger(__name__)


class VersionView:
    def __init__(self, pool: ReplicaPool) -> None:
        self.pool = pool
        self.versions = VersionTracker()
        # The pinned version and its holders depend only on what the replicas reported and on
        # the live sets: computed once per change, not per query.
        self._pin_key: tuple[int, ...] | None = None
        self._pin: str | None = None
        self._holders: dict[tuple[int, str], set[str]] = {}
        # Where the replicas' applied log positions go (the result cache's keys); set by the
        # server. The poll is how a coordinator whose cache keeps hitting still learns them.
        self.positions: LogPositions | None = None

    def _epoch(self) -> tuple[int, ...]:
        return (self.versions.generation, *self.pool.generations())

    def pinned_version(self) -> str | None:
        """The newest index version every shard has a live replica for (None: unknown)."""
        key = self._epoch()
        if key != self._pin_key:
            self._pin = self.versions.choose(self.pool.live_addresses(),
                                             self.pool.config.num_shards)
            self._holders = {}
            self._pin_key = key
        return self._pin

    def holders(self, shard: int, version: str) -> set[str]:
        """Replicas of ``shard`` known to hold ``version`` (cached per version epoch)."""
        if self._epoch() != self._pin_key:
            self.pinned_version()
        found = self._holders.get((shard, version))
        if found is None:
            found = self._holders[(shard, version)] = self.versions.holders(shard, version)
        return found

    def forget(self, shard: int, address: str) -> None:
        self.versions.forget(shard, address)

    async def poll(self, timeout_s: float) -> None:
        """Ask every live replica which index versions it holds (Stats), directly: a poll is
        not a query, so it does not move the balancer's latency or failure counts."""
        live = [(s, a) for s, addresses in self.pool.live_addresses().items() for a in addresses]
        await asyncio.gather(*(self._poll_one(s, a, timeout_s) for s, a in live))

    async def _poll_one(self, shard: int, address: str, timeout_s: float) -> None:
        replica = self.pool.replicas.get((shard, address))
        if replica is None:
            return
        try:
            with self.pool.holding(replica):
                stats = await replica.stub.Stats(cbir_pb2.StatsRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if not replica.retired:
                log.debug("shard %d: version poll of %s failed: %s", shard, address,
                          exc.code().name)
                self.versions.forget(shard, address)
            return
        if replica.retired:  # removed while we asked: its answer must not bring it back
            return
        self.versions.report(shard, address, stats.held_versions or [stats.index_version])
        if self.positions is not None:
            self.positions.learn(shard, stats.applied_seq)
