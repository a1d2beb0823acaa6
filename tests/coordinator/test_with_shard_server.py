"""The coordinator over the real shard server and a real index built by the real build."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from cbir.client import CoordinatorClient
from cbir.errors import NotFound
from coordinator.config import BalancerConfig, CoordinatorConfig
from coordinator.server import CoordinatorServer
from coordinator.topology import StaticTopology
from shard_server.server import ShardServer
from tests.coordinator.harness import LoopThread, ShardData, flat_top_k
from tests.shard_server.conftest import SHARDS, BuiltIndex, build, config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_index(tmp_path_factory: pytest.TempPathFactory) -> BuiltIndex:
    return build(tmp_path_factory.mktemp("coord"), "coord", n=400)


@pytest.fixture
def real_cluster(loop_thread: LoopThread, real_index: BuiltIndex
                 ) -> Iterator[tuple[str, list[list[ShardServer]]]]:
    async def start() -> tuple[CoordinatorServer, list[list[ShardServer]]]:
        shards = [[ShardServer(config(real_index.root, shard=s)) for _ in range(2)]
                  for s in range(SHARDS)]
        for replicas in shards:
            for r in replicas:
                await r.start()
        topology = {s: tuple(f"127.0.0.1:{r.port}" for r in reps) for s, reps in enumerate(shards)}
        cfg = CoordinatorConfig(num_shards=SHARDS, port=0, resolve_interval_s=0.5,
                                balancer=BalancerConfig(reprobe_interval_s=0.2))
        coordinator = CoordinatorServer(cfg, StaticTopology(topology), None)
        await coordinator.start()
        await asyncio.wait_for(coordinator.ready.wait(), 30)
        return coordinator, shards

    coordinator, shards = loop_thread.run(start(), timeout=120)
    yield f"127.0.0.1:{coordinator.port}", shards
    loop_thread.run(coordinator.stop(0))
    for replicas in shards:
        for r in replicas:
            loop_thread.run(r.stop(0))


def data_of(index: BuiltIndex) -> ShardData:
    return ShardData(index.ids.astype(np.int64), index.vectors.astype(np.float32), index.keys)


def test_sharded_answers_equal_one_flat_index(
    real_cluster: tuple[str, list[list[ShardServer]]], real_index: BuiltIndex
) -> None:
    address, _ = real_cluster
    data = data_of(real_index)
    with CoordinatorClient(address, timeout_s=10) as client:
        info = client.info()
        assert (info.num_shards, info.index_version) == (SHARDS, real_index.version)
        for i in range(10):
            result = client.search_vector(data.vectors[i], k=8)
            assert not result.partial and result.index_version == real_index.version
            assert [h.image_id for h in result.hits] == flat_top_k(data, data.vectors[i], 8)
            assert result.hits[0].key == real_index.keys[i]
        by_id = client.search_id(int(data.ids[7]), k=5, exclude_query_image=True)
        assert [h.image_id for h in by_id.hits] == flat_top_k(data, data.vectors[7], 6)[1:]
        with pytest.raises(NotFound, match="unknown image id 12345"):
            client.search_id(12345)


def test_failover_and_partial_answers_with_real_shards(
    loop_thread: LoopThread, real_cluster: tuple[str, list[list[ShardServer]]],
    real_index: BuiltIndex,
) -> None:
    address, shards = real_cluster
    data = data_of(real_index)
    with CoordinatorClient(address, timeout_s=10) as client:
        loop_thread.run(shards[0][0].stop(0))
        loop_thread.run(shards[1][1].stop(0))
        for i in range(10):  # one replica of each shard left: full answers
            result = client.search_vector(data.vectors[i], k=5)
            assert not result.partial
            assert [h.image_id for h in result.hits] == flat_top_k(data, data.vectors[i], 5)
        loop_thread.run(shards[1][0].stop(0))  # shard 1 has no replica left
        # A query not asked before: vectors[0]'s complete answer is in the result cache, which
        # still answers it (same index version, docs/filters.md).
        result = client.search_vector(data.vectors[10], k=5, timeout_s=3)
        assert result.partial and result.failed_shards == (1,)
        assert all(h.shard == 0 for h in result.hits)


def test_limit_edges_get_answers_or_invalid_argument_not_unavailable(
    real_cluster: tuple[str, list[list[ShardServer]]], real_index: BuiltIndex
) -> None:
    """k = max_k with the query image excluded still answers (the shards are asked for at most
    max_k), and an ef_search beyond the limit is the caller's mistake, not a shard outage."""
    from cbir.errors import InvalidArgument
    from cbir.limits import DEFAULT_LIMITS

    address, _ = real_cluster
    data = data_of(real_index)
    with CoordinatorClient(address, timeout_s=10) as client:
        result = client.search_id(int(data.ids[3]), k=DEFAULT_LIMITS.max_k,
                                  exclude_query_image=True)
        assert not result.partial
        assert int(data.ids[3]) not in [h.image_id for h in result.hits]
        assert len(result.hits) == len(data.ids) - 1  # 400 vectors < max_k: all but itself
        with pytest.raises(InvalidArgument, match="ef_search must be <="):
            client.search_vector(data.vectors[0], k=5,
                                 ef_search=DEFAULT_LIMITS.max_ef_search + 1)
