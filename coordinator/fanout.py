"""Calls to one shard: one channel per replica, replica choice by the balancer, retry on
another replica, optional hedging, and every attempt bounded by the caller's deadline.

Deadlines are absolute ``time.monotonic()`` values; each attempt's timeout is what is left of
the caller's deadline minus a margin, so the merged answer can leave before the caller gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cbir.rpc.security import client_channel
from cbir.rpc.serving import channel_options
from coordinator.balancer import BALANCERS, ShardBalancer
from coordinator.config import CoordinatorConfig
from coordinator.metrics import CoordinatorMetrics
from coordinator.versions import VersionTracker
from protos import cbir_pb2, cbir_pb2_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")
ShardCall = Callable[[cbir_pb2_grpc.ShardStub, float], Awaitable[T]]

Code = grpc.StatusCode
# Worth another replica: the replica (not the request) was the problem.
RETRYABLE = frozenset(
    {Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.RESOURCE_EXHAUSTED, Code.ABORTED,
     Code.CANCELLED}
)
# Count towards ejecting the replica.
EJECTING = frozenset({Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED})
SHARD_SERVICE = "cbir.v1.Shard"
# Reconnect quickly to a replica that comes back (grpc's default backoff grows to 120 s).
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class ShardCallFailed(Exception):
    """Every attempt on a shard failed (or none could be made) within the deadline."""

    def __init__(self, shard: int, reason: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(f"shard {shard}: {reason}")
        self.shard = shard
        self.reason = reason
        self.code = code


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


class Fanout:
    def __init__(
        self,
        config: CoordinatorConfig,
        metrics: CoordinatorMetrics,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        policy = BALANCERS[config.balancer.policy]
        self.balancers: dict[int, ShardBalancer] = {
            s: policy(s, config.balancer, rng) for s in range(config.num_shards)
        }
        self.replicas: dict[tuple[int, str], Replica] = {}
        hedge = config.hedge_after_ms
        self.hedge_s = hedge / 1000.0 if hedge is not None and hedge > 0 else None
        self._closers: set[asyncio.Task[None]] = set()
        self._shadows: set[asyncio.Task[Any]] = set()
        self.versions = VersionTracker()
        # The pinned version and its holders depend only on what the replicas reported and on
        # the live sets: computed once per change, not per query.
        self._pin_key: tuple[int, ...] | None = None
        self._pin: str | None = None
        self._holders: dict[tuple[int, str], set[str]] = {}

    # ------------------------------------------------------------- topology

    def update_topology(self, topology: Mapping[int, tuple[str, ...]]) -> None:
        for shard, balancer in self.balancers.items():
            added, removed = balancer.set_addresses(topology.get(shard, ()))
            for address in added:
                self.replicas[(shard, address)] = self._open(shard, address)
                log.info("shard %d: replica %s added", shard, address)
            for address in removed:
                replica = self.replicas.pop((shard, address))
                replica.retired = True
                self.versions.forget(shard, address)
                log.info("shard %d: replica %s removed", shard, address)
                if replica.in_flight == 0:
                    self._close_later(replica)
                self.metrics.in_flight.remove(str(shard), address)
                # Per-replica series go with the replica: with DNS over pod IPs, keeping them
                # would grow the label sets with every pod that ever existed.
                with contextlib.suppress(KeyError):
                    self.metrics.ejections.remove(str(shard), address)
            self._publish_live(shard)

    def _publish_live(self, shard: int) -> None:
        self.metrics.live_replicas.labels(str(shard)).set(len(self.balancers[shard].live()))

    def _open(self, shard: int, address: str) -> Replica:
        options = [*channel_options(self.config.limits), *RECONNECT_OPTIONS]
        channel = client_channel(address, self.config.shard_security, options)
        gauge = self.metrics.in_flight.labels(str(shard), address)
        gauge.set(0)
        return Replica(shard, address, channel, cbir_pb2_grpc.ShardStub(channel),
                       health_pb2_grpc.HealthStub(channel), gauge)

    @contextlib.contextmanager
    def _holding(self, replica: Replica) -> Iterator[None]:
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

    def _epoch(self) -> tuple[int, ...]:
        return (self.versions.generation, *(b.generation for b in self.balancers.values()))

    def pinned_version(self) -> str | None:
        """The newest index version every shard has a live replica for (None: unknown)."""
        key = self._epoch()
        if key != self._pin_key:
            self._pin = self.versions.choose(self.live_addresses(), self.config.num_shards)
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

    def hedge_delay_s(self, shard: int) -> float | None:
        """Fixed --hedge-after-ms, else the shard's recent latency quantile (adaptive)."""
        if self.hedge_s is not None or not self.config.adaptive_hedge:
            return self.hedge_s
        quantile = self.balancers[shard].latency_quantile()
        if quantile is None:
            return None
        return max(quantile, self.config.hedge_min_ms / 1000.0)

    async def poll_versions(self, timeout_s: float) -> None:
        """Ask every live replica which index versions it holds (Stats), directly: a poll is
        not a query, so it does not move the balancer's latency or failure counts."""
        live = [(s, a) for s, addresses in self.live_addresses().items() for a in addresses]
        await asyncio.gather(*(self._poll_one(s, a, timeout_s) for s, a in live))

    async def _poll_one(self, shard: int, address: str, timeout_s: float) -> None:
        replica = self.replicas.get((shard, address))
        if replica is None:
            return
        try:
            with self._holding(replica):
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

    def live_counts(self) -> dict[int, int]:
        return {s: len(b.live()) for s, b in self.balancers.items()}

    async def close(self) -> None:
        for task in list(self._shadows):
            task.cancel()
        for replica in self.replicas.values():
            await replica.channel.close()
        self.replicas.clear()
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)

    # ------------------------------------------------------------- calls

    def attempt_budget_s(self, deadline: float) -> float:
        return deadline - time.monotonic() - self.config.deadline_margin_s

    async def call(
        self,
        shard: int,
        fn: ShardCall[T],
        deadline: float,
        retry_codes: frozenset[grpc.StatusCode] = RETRYABLE,
        prefer: set[str] | None = None,
    ) -> T:
        """One logical call to ``shard``: retried on other replicas, maybe hedged. Replicas in
        ``prefer`` (e.g. those holding a pinned index version) are tried first."""
        attempt: _Attempts[T] = _Attempts(self, shard, fn, deadline, prefer)
        try:
            return await attempt.run(retry_codes)
        finally:
            attempt.cancel_pending()
            self._maybe_shadow(shard, fn, deadline, attempt.tried, prefer)

    def _maybe_shadow(self, shard: int, fn: ShardCall[T], deadline: float, tried: set[str],
                      prefer: set[str] | None) -> None:
        """Send a copy of this call to a replica whose latency estimate is stale; nobody waits
        for it, its latency (or failure) just updates the balancer."""
        address = self.balancers[shard].shadow_candidate(exclude=tried, among=prefer)
        if address is None or self.attempt_budget_s(deadline) <= 0:
            return
        task = asyncio.ensure_future(self.attempt(shard, address, fn, deadline))
        self._shadows.add(task)
        task.add_done_callback(_forget_shadow(self._shadows))
        self.metrics.latency_probes.labels(str(shard)).inc()

    async def attempt(self, shard: int, address: str, fn: ShardCall[T], deadline: float) -> T:
        replica = self.replicas.get((shard, address))
        if replica is None:
            # Removed from the topology between the pick and this attempt's start: the replica,
            # not the request, is gone, so answer like an unreachable one (retried elsewhere).
            raise grpc.aio.AioRpcError(Code.UNAVAILABLE, grpc.aio.Metadata(),
                                       grpc.aio.Metadata(), f"replica {address} was removed")
        balancer = self.balancers[shard]
        gauge = replica.gauge
        balancer.begin(address)
        replica.in_flight += 1
        gauge.inc()
        start = time.monotonic()
        try:
            result = await fn(replica.stub, max(self.attempt_budget_s(deadline), 0.001))
        except grpc.aio.AioRpcError as exc:
            if exc.code() in EJECTING and balancer.failed(address):
                log.warning("shard %d: ejecting replica %s after %s", shard, address,
                            exc.code().name)
                self.metrics.ejections.labels(str(shard), address).inc()
                self._publish_live(shard)
            raise
        else:
            balancer.succeeded(address, time.monotonic() - start, self.config.hedge_quantile)
            return result
        finally:
            balancer.end(address)
            replica.in_flight -= 1
            if not replica.retired:
                gauge.dec()
            elif replica.in_flight == 0:
                self._close_later(replica)

    # ------------------------------------------------------------- probing

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
            with self._holding(replica):
                reply = await replica.health.Check(request, timeout=self.config.probe_timeout_s)
        except grpc.aio.AioRpcError as exc:
            log.debug("shard %d: probe of %s failed: %s", shard, address, exc.code().name)
            return
        if replica.retired:
            return
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            self.balancers[shard].restore(address)
            self._publish_live(shard)
            log.info("shard %d: replica %s back in rotation", shard, address)


def _forget_shadow(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed shadow call is already counted

    return done


class _Attempts(Generic[T]):
    """The attempts of one logical call: at most one in flight, plus one hedge."""

    def __init__(self, fanout: Fanout, shard: int, fn: ShardCall[T], deadline: float,
                 prefer: set[str] | None = None) -> None:
        self.fanout = fanout
        self.prefer = prefer
        self.shard = shard
        self.fn = fn
        self.deadline = deadline
        self.tried: set[str] = set()
        self.pending: dict[asyncio.Task[T], str] = {}
        self.hedged = False
        self.last_reason = "no live replica"
        self.last_code: grpc.StatusCode | None = None

    def launch(self) -> bool:
        if self.fanout.attempt_budget_s(self.deadline) <= 0:
            self.last_reason = f"deadline exceeded ({self.last_reason})"
            self.last_code = Code.DEADLINE_EXCEEDED
            return False
        balancer = self.fanout.balancers[self.shard]
        address = None
        if self.prefer is not None:
            others = set(balancer.replicas) - self.prefer
            address = balancer.pick(exclude=self.tried | others)
        if address is None:
            address = balancer.pick(exclude=self.tried)
        if address is None:
            return False
        self.tried.add(address)
        coro = self.fanout.attempt(self.shard, address, self.fn, self.deadline)
        self.pending[asyncio.ensure_future(coro)] = address
        return True

    async def run(self, retry_codes: frozenset[grpc.StatusCode]) -> T:
        hedge_s = self.fanout.hedge_delay_s(self.shard)
        metrics = self.fanout.metrics
        if not self.launch():
            raise ShardCallFailed(self.shard, self.last_reason, self.last_code)
        while self.pending:
            wait_s = max(self.fanout.attempt_budget_s(self.deadline), 0.0)
            hedge_now = hedge_s is not None and not self.hedged and len(self.pending) == 1
            done, _ = await asyncio.wait(
                self.pending, timeout=min(wait_s, hedge_s) if hedge_now and hedge_s else wait_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:
                if hedge_now and self.fanout.attempt_budget_s(self.deadline) > 0:
                    self.hedged = True
                    if self.launch():
                        metrics.hedges.labels(str(self.shard)).inc()
                    continue
                self.last_reason, self.last_code = "deadline exceeded", Code.DEADLINE_EXCEEDED
                break
            for task in done:
                address = self.pending.pop(task)
                exc = task.exception()
                if exc is None:
                    return task.result()
                if not isinstance(exc, grpc.aio.AioRpcError):
                    raise exc
                self.last_code = exc.code()
                self.last_reason = f"{address}: {exc.code().name}: {exc.details()}"
                if exc.code() not in retry_codes:
                    raise ShardCallFailed(self.shard, self.last_reason, self.last_code)
                if exc.code() == Code.FAILED_PRECONDITION:
                    metrics.version_retries.labels(str(self.shard)).inc()
            if not self.pending and self.launch():
                metrics.retries.labels(str(self.shard)).inc()
        raise ShardCallFailed(self.shard, self.last_reason, self.last_code)

    def cancel_pending(self) -> None:
        for task in self.pending:
            task.cancel()
