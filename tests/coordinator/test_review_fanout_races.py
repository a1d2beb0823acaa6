"""Review: a replica removed from the topology between the balancer's pick and the start of
the attempt must not turn into a stray KeyError that fails the whole query (real gRPC fake
shard replicas, a real Fanout)."""

from __future__ import annotations

import asyncio
import time

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
