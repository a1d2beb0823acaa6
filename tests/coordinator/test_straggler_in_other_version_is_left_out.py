"""Before any version is complete in every shard (majority path), a straggler shard
that answers the re-ask in another version than the one it was pinned to must be left out
(failed shard), never merged - the same guard the pinned paths have."""

from __future__ import annotations

import time
from typing import Any

import grpc

from cbir.client import CoordinatorClient
from tests.coordinator.harness import FakeShardServicer, LoopThread, start_cluster


class IgnoresPin(FakeShardServicer):
    """A replica that answers in its own version whatever the request is pinned to."""

    async def Search(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.index_version:
            self.pinned.append(request.index_version)
            request.index_version = ""
        return await super().Search(request, context)


def test_majority_path_never_merges_a_straggler_of_another_version(
        loop_thread: LoopThread) -> None:
    cluster = start_cluster(loop_thread, replicas=1, versions=["v1", "v2"])
    try:
        replica = cluster.replicas[0][0]
        cluster.stop_replica(0, 0)
        old = replica.servicer
        replica.servicer = IgnoresPin(old.shard, old.num_shards, old.data, index_version="v1")
        cluster.start_replica(0, 0)  # same port: shard 0 now serves v1 whatever it is asked
        assert cluster.coordinator.search.fanout.pinned_version() is None  # nothing complete
        with CoordinatorClient(cluster.address) as client:
            for _ in range(50):  # until shard 0 is reachable again and got the pinned re-ask
                result = client.search_vector(cluster.data.vectors[0], k=5, timeout_s=10)
                if replica.servicer.pinned:
                    break
                time.sleep(0.1)
        assert replica.servicer.pinned == ["v2"]
        assert result.index_version == "v2"  # tie v1/v2 -> the greatest name
        assert {h.shard for h in result.hits} == {1}
        assert result.partial and result.failed_shards == (0,)
    finally:
        cluster.close()
