"""Cross-query micro-batching through a real coordinator and real gRPC fake shards: queries that
queue while a shard call is in flight share one ShardSearchRequest, and each still gets its own
exact answer, its own deadline and its own partial flag."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from cbir.client import CoordinatorClient
from tests.coordinator.harness import LoopThread, flat_top_k, ids, start_cluster, wait_for


def wait_pinned(cluster_search: object, timeout_s: float = 10.0) -> None:
    fanout = cluster_search.fanout  # type: ignore[attr-defined]
    if not wait_for(lambda: fanout.pinned_version() is not None, timeout_s):
        raise AssertionError("no index version pinned")


def test_concurrent_queries_share_shard_calls_and_get_exact_answers(
        loop_thread: LoopThread) -> None:
    cluster = start_cluster(loop_thread, replicas=1)
    try:
        wait_pinned(cluster.coordinator.search)
        for shard in cluster.replicas:
            shard[0].servicer.delay_s = 0.05  # calls stay in flight while others queue
        vectors = [cluster.data.vectors[i] for i in range(40)]
        with CoordinatorClient(cluster.address) as client, ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda v: client.search_vector(v, k=5, timeout_s=10), vectors))
        for vector, result in zip(vectors, results, strict=True):
            assert not result.partial
            assert ids(result) == flat_top_k(cluster.data, vector, 5)
        for shard in cluster.replicas:
            rows = shard[0].servicer.rows
            assert max(rows) > 1  # some calls carried several queries...
            assert len(rows) < len(vectors)  # ...so fewer calls than queries
    finally:
        cluster.close()


def test_each_query_in_a_batch_keeps_its_own_deadline(loop_thread: LoopThread) -> None:
    cluster = start_cluster(loop_thread, replicas=1)
    try:
        wait_pinned(cluster.coordinator.search)
        cluster.replicas[1][0].servicer.delay_s = 0.8  # shard 1 is slow
        v = cluster.data.vectors
        with CoordinatorClient(cluster.address) as client, ThreadPoolExecutor(4) as pool:
            patient = pool.submit(client.search_vector, v[0], 5, timeout_s=10)
            time.sleep(0.1)  # shard 1's only call slot is now busy with the patient query
            hurried = [pool.submit(client.search_vector, v[i], 5, timeout_s=0.4)
                       for i in (1, 2)]
            quick = [f.result() for f in hurried]
            slow = patient.result()
        assert not slow.partial and ids(slow) == flat_top_k(cluster.data, v[0], 5)
        for result in quick:  # queued behind the slow call: left out of shard 1, not failed
            assert result.partial and result.failed_shards == (1,)
            assert result.hits and all(h.shard == 0 for h in result.hits)
    finally:
        cluster.close()


def test_batching_off_sends_one_call_per_query(loop_thread: LoopThread) -> None:
    cluster = start_cluster(loop_thread, replicas=1, batch_in_flight_per_replica=0)
    try:
        wait_pinned(cluster.coordinator.search)
        for shard in cluster.replicas:
            shard[0].servicer.delay_s = 0.02
        vectors = [cluster.data.vectors[i] for i in range(12)]
        with CoordinatorClient(cluster.address) as client, ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda v: client.search_vector(v, k=5), vectors))
        assert all(not r.partial for r in results)
        for shard in cluster.replicas:
            assert set(shard[0].servicer.rows) == {1}
    finally:
        cluster.close()
