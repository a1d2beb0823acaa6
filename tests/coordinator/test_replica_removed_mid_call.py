"""A replica removed from the topology between the balancer's pick and the start of
the attempt must not turn into a stray KeyError that fails the whole query (real gRPC fake
shard replicas, a real Fanout)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.config import CoordinatorConfig
from coordinator.fanout import Fanout
from coordinator.metrics import CoordinatorMetrics
from protos import cbir_pb2
from tests.coordinator.harness import FakeReplica, FakeShardServicer, LoopThread, make_dataset


def test_replica_removed_between_pick_and_attempt_is_retried(loop_thread: LoopThread) -> None:
    data = make_dataset(n=20)
    replicas = [FakeReplica(FakeShardServicer(0, 1, data)) for _ in range(2)]
    for r in replicas:
        loop_thread.run(r.start())

    async def scenario() -> int:
        fanout = Fanout(CoordinatorConfig(num_shards=1, port=0, adaptive_hedge=False),
                        CoordinatorMetrics())
        first, second = (r.address for r in replicas)
        fanout.update_topology({0: (first,)})
        try:
            task = asyncio.ensure_future(fanout.call(
                0, lambda stub, t: stub.Stats(cbir_pb2.StatsRequest(), timeout=t),
                time.monotonic() + 5))
            await asyncio.sleep(0)  # the call picked `first`; its attempt has not started yet
            fanout.update_topology({0: (second,)})  # e.g. a DNS refresh replaced the pod
            reply = await asyncio.wait_for(task, 5)
            return reply.count
        finally:
            await fanout.close()

    try:
        count = loop_thread.run(scenario())
        assert count == 20
    finally:
        for r in replicas:
            loop_thread.run(r.stop(0))


class SlowStats(FakeShardServicer):
    """Stats answers late, so a version poll can be in flight while the topology changes."""

    async def Stats(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await asyncio.sleep(0.3)
        return await super().Stats(request, context)


def test_version_report_of_a_replica_removed_mid_poll_is_not_kept(
        loop_thread: LoopThread) -> None:
    data = make_dataset(n=20)
    replicas = [FakeReplica(SlowStats(0, 1, data)), FakeReplica(FakeShardServicer(0, 1, data))]
    for r in replicas:
        loop_thread.run(r.start())

    async def scenario() -> dict[tuple[int, str], tuple[str, ...]]:
        fanout = Fanout(CoordinatorConfig(num_shards=1, port=0), CoordinatorMetrics())
        slow, other = (r.address for r in replicas)
        fanout.update_topology({0: (slow, other)})
        try:
            poll = asyncio.ensure_future(fanout.poll_versions(5.0))
            await asyncio.sleep(0.1)  # both Stats calls are in flight; `other` answered
            fanout.update_topology({0: (other,)})  # `slow` leaves the topology meanwhile
            await poll
            return dict(fanout.versions.held)
        finally:
            await fanout.close()

    try:
        held = loop_thread.run(scenario())
        # A removed replica's late answer must not resurrect it in the version books (they
        # would grow with every pod that ever left, and a re-added address would start with
        # versions it may no longer hold).
        assert held == {(0, replicas[1].address): ("v1",)}
    finally:
        for r in replicas:
            loop_thread.run(r.stop(0))


class SlowHealth(health_pb2_grpc.HealthServicer):
    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await asyncio.sleep(0.5)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def test_health_probe_of_a_replica_removed_mid_probe_does_not_end_probing(
        loop_thread: LoopThread) -> None:
    data = make_dataset(n=20)
    good = FakeReplica(FakeShardServicer(0, 1, data))
    loop_thread.run(good.start())
    async def start_slow_health() -> tuple[grpc.aio.Server, str]:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(SlowHealth(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, f"127.0.0.1:{port}"

    slow_health, mute = loop_thread.run(start_slow_health())

    async def scenario() -> None:
        fanout = Fanout(CoordinatorConfig(num_shards=1, port=0), CoordinatorMetrics())
        fanout.update_topology({0: (mute, good.address)})
        state = fanout.balancers[0].replicas[mute]
        state.ejected, state.last_probe = True, float("-inf")  # due for a health probe
        try:
            probe = asyncio.ensure_future(fanout.probe_ejected())
            await asyncio.sleep(0.2)  # the probe is in flight
            fanout.update_topology({0: (good.address,)})  # the ejected pod is gone for good
            await asyncio.wait_for(probe, 5)  # a CancelledError here ends the probe loop
        finally:
            await fanout.close()

    try:
        loop_thread.run(scenario())
    finally:
        loop_thread.run(slow_health.stop(0))
        loop_thread.run(good.stop(0))
