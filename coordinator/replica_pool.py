"""The replicas of every shard: one channel each, the balancer that picks among them, health
probing that brings ejected replicas back, and single attempts (one call on one replica).

Deadlines are absolute ``time.monotonic()`` values; each attempt's timeout is what is left of
the caller's deadline minus a margin (``attempt_budget_s``), so the merged answer can leave
before the caller gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cbir.rpc.security import client_channel
from cbir.rpc.serving import channel_options
from coordinator.balancer import BALANCERS, ShardBalancer
from coordinator.config import CoordinatorConfig
from coordinator.metrics import CoordinatorMetrics
from protos import cbir_pb2_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")
ShardCall = Callable[[cbir_pb2_grpc.ShardStub, float], Awaitable[T]]

Code = grpc.StatusCode
# Count towards ejecting the replica.
EJECTING = frozenset({Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED})
SHARD_SERVICE = "cbir.v1.Shard"
# Reconnect quickly to a replica that comes back (grpc's default backoff grows to 120 s).
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass
class Replica:
    shard: int
    address: str
    channel: grpc.aio.Channel
    stub: cbir_pb2_grpc.ShardStub
    health: health_pb2_grpc.HealthStub
    gauge: Any  # its in-flight gauge child: .labels() once, not per call
    in_flight: int = 0
    retired: bool = False


class ReplicaPool:
    def __init__(self, config: CoordinatorConfig, metrics: CoordinatorMetrics,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.metrics = metrics
        policy = BALANCERS[config.balancer.policy]
        self.balancers: dict[int, ShardBalancer] = {
            s: policy(s, config.balancer, rng) for s in range(config.num_shards)
        }
        self.replicas: dict[tuple[int, str], Replica] = {}
        self._closers: set[asyncio.Task[None]] = set()

    def update_topology(self, topology: Mapping[int, tuple[str, ...]]) -> list[tuple[int, str]]:
        """Open channels to new replicas, retire removed ones; returns the removed ones."""
        removed_all = []
        for shard, balancer in self.balancers.items():
            added, removed = balancer.set_addresses(topology.get(shard, ()))
            for address in added:
                self.replicas[(shard, address)] = self._open(shard, address)
                log.info("shard %d: replica %s added", shard, address)
            for address in removed:
                self._retire(shard, address)
                removed_all.append((shard, address))
            self.publish_live(shard)
        return removed_all

    def _retire(self, shard: int, address: str) -> None:
        replica = self.replicas.pop((shard, address))
        replica.retired = True
        log.info("shard %d: replica %s removed", shard, address)
        if replica.in_flight == 0:
            self._close_later(replica)
        self.metrics.in_flight.remove(str(shard), address)
        # Per-replica series go with the replica: with DNS over pod IPs, keeping them would
        # grow the label sets with every pod that ever existed.
        with contextlib.suppress(KeyError):
            self.metrics.ejections.remove(str(shard), address)

    def publish_live(self, shard: int) -> None:
        self.metrics.live_replicas.labels(str(shard)).set(len(self.balancers[shard].live()))

    def _open(self, shard: int, address: str) -> Replica:
        options = [*channel_options(self.config.limits), *RECONNECT_OPTIONS]
        channel = client_channel(address, self.config.shard_security, options)
        gauge = self.metrics.in_flight.labels(str(shard), address)
        gauge.set(0)
        return Replica(shard, address, channel, cbir_pb2_grpc.ShardStub(channel),
                       health_pb2_grpc.HealthStub(channel), gauge)

    @contextlib.contextmanager
    def holding(self, replica: Replica) -> Iterator[None]:
        """Keep ``replica``'s channel open during a side call (version poll, health probe):
        closing it under the call would cancel it, and the CancelledError would end the
        background loop that made it. Not counted in the balancer or the in-flight gauge."""
        replica.in_flight += 1
        try:
            yield
        finally:
            replica.in_flight -= 1
            if replica.retired and replica.in_flight == 0:
                self._close_later(replica)

    def _close_later(self, replica: Replica) -> None:
        task = asyncio.get_running_loop().create_task(replica.channel.close())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def live_addresses(self) -> dict[int, list[str]]:
        return {s: [r.address for r in b.live()] for s, b in self.balancers.items()}

    def live_counts(self) -> dict[int, int]:
        return {s: len(b.live()) for s, b in self.balancers.items()}

    def generations(self) -> tuple[int, ...]:
        """Changes whenever any shard's live set changes."""
        return tuple(b.generation for b in self.balancers.values())

    def attempt_budget_s(self, deadline: float) -> float:
        return deadline - time.monotonic() - self.config.deadline_margin_s

    async def attempt(self, shard: int, address: str, fn: ShardCall[T], deadline: float) -> T:
        """One call on one replica, counted by the balancer (latency, failures, ejection)."""
        replica = self.replicas.get((shard, address))
        if replica is None:
            # Removed from the topology between the pick and this attempt's start: the replica,
            # not the request, is gone, so answer like an unreachable one (retried elsewhere).
            raise grpc.aio.AioRpcError(Code.UNAVAILABLE, grpc.aio.Metadata(),
                                       grpc.aio.Metadata(), f"replica {address} was removed")
        balancer = self.balancers[shard]
        balancer.begin(address)
        replica.in_flight += 1
        replica.gauge.inc()
        start = time.monotonic()
        try:
            result = await fn(replica.stub, max(self.attempt_budget_s(deadline), 0.001))
        except grpc.aio.AioRpcError as exc:
            if exc.code() in EJECTING and balancer.failed(address):
                log.warning("shard %d: ejecting replica %s after %s", shard, address,
                            exc.code().name)
                self.metrics.ejections.labels(str(shard), address).inc()
                self.publish_live(shard)
            raise
        else:
            balancer.succeeded(address, time.monotonic() - start, self.config.hedge_quantile)
            return result
        finally:
            balancer.end(address)
            replica.in_flight -= 1
            if not replica.retired:
                replica.gauge.dec()
            elif replica.in_flight == 0:
                self._close_later(replica)

    async def probe_ejected(self) -> None:
        """Health-check the ejected replicas that are due; restore those that answer SERVING."""
        due = [(s, a) for s, b in self.balancers.items() for a in b.due_for_probe()]
        if due:
            await asyncio.gather(*(self._probe(s, a) for s, a in due))

    async def _probe(self, shard: int, address: str) -> None:
        replica = self.replicas.get((shard, address))
        if replica is None:
            return
        request = health_pb2.HealthCheckRequest(service=SHARD_SERVICE)
        try:
            with self.holding(replica):
                reply = await replica.health.Check(request, timeout=self.config.probe_timeout_s)
        except grpc.aio.AioRpcError as exc:
            log.debug("shard %d: probe of %s failed: %s", shard, address, exc.code().name)
            return
        if replica.retired:
            return
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            self.balancers[shard].restore(address)
            self.publish_live(shard)
            log.info("shard %d: replica %s back in rotation", shard, address)

    async def close(self) -> None:
        for replica in self.replicas.values():
            await replica.channel.close()
        self.replicas.clear()
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)
