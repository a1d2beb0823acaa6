"""A batched shard call whose every query has left (callers cancelled) is withdrawn,
so it does not hold one of the shard's call slots until the latest deadline of its queries
while other queries queue behind it (real coordinator, real gRPC fake shards)."""

from __future__ import annotations

import time

import grpc

from cbir.client import CoordinatorClient
from protos import cbir_pb2, cbir_pb2_grpc
from tests.coordinator.harness import LoopThread, flat_top_k, ids, start_cluster
from tests.coordinator.test_batching import wait_pinned


def test_cancelled_query_does_not_hold_the_batch_slot(loop_thread: LoopThread) -> None:
    cluster = start_cluster(loop_thread, replicas=1, adaptive_hedge=False)
    try:
        wait_pinned(cluster.coordinator.search)
        slow = cluster.replicas[1][0].servicer
        slow.delay_s = 3.0  # shard 1 stalls on this one call...
        v = cluster.data.vectors
        with grpc.insecure_channel(cluster.address) as channel:
            request = cbir_pb2.SearchRequest(k=5, vector=cbir_pb2.FloatVector(values=v[0].tolist()))
            abandoned = cbir_pb2_grpc.CoordinatorStub(channel).Search.future(request, timeout=30)
            time.sleep(0.3)  # its batch is in flight on shard 1's only call slot
            slow.delay_s = 0.0  # ...and is quick again for everything after it
            abandoned.cancel()  # the caller gives up
            time.sleep(0.2)
            with CoordinatorClient(cluster.address) as client:
                result = client.search_vector(v[1], 5, timeout_s=1.5)
        assert not result.partial, result.failed_shards  # not stuck behind the abandoned call
        assert ids(result) == flat_top_k(cluster.data, v[1], 5)
    finally:
        cluster.close()
