"""The coordinator over real gRPC replicas (fake shard servicers, real servers on 127.0.0.1)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cbir.client import CoordinatorClient, SearchResult
from cbir.errors import FailedPrecondition, Unavailable
from tests.coordinator.harness import (
    DIM,
    Cluster,
    FakeEmbedder,
    LoopThread,
    flat_top_k,
    ids,
    start_cluster,
    wait_for,
)


def test_vector_search_equals_one_flat_index(cluster: Cluster) -> None:
    rng = np.random.default_rng(3)
    with CoordinatorClient(cluster.address, timeout_s=5) as client:
        for _ in range(5):
            q = rng.standard_normal(DIM).astype(np.float32) * 3.0  # unnormalised on purpose
            result = client.search_vector(q, k=7)
            assert not result.partial and result.failed_shards == ()
            assert ids(result) == flat_top_k(cluster.data, q / np.linalg.norm(q), 7)
            assert result.metric == "ip" and result.index_version == "v1"
            scores = [h.score for h in result.hits]
            assert scores == sorted(scores, reverse=True)
            assert all(h.shard == h.image_id % 2 for h in result.hits)
            assert all(h.key.startswith("s3://photos/") for h in result.hits)


def test_search_by_image_id_and_excluding_it(cluster: Cluster) -> None:
    target = int(cluster.data.ids[11])
    with CoordinatorClient(cluster.address, timeout_s=5) as client:
        with_self = client.search_id(target, k=4)
        without = client.search_id(target, k=4, exclude_query_image=True)
    assert ids(with_self)[0] == target
    assert with_self.hits[0].key == "s3://photos/img0011.jpg"
    assert ids(without) == flat_top_k(cluster.data, cluster.data.vectors[11], 5)[1:]


def test_search_by_image_uses_the_query_embedder(cluster: Cluster) -> None:
    image = b"\x89PNG fake image bytes"
    with CoordinatorClient(cluster.address, timeout_s=5) as client:
        result = client.search_image(image, k=5)
    expected = flat_top_k(cluster.data, cluster.embedder.embed(image), 5)
    assert ids(result) == expected


def query_stream(client: CoordinatorClient, data_vectors: np.ndarray, n: int,
                 out: list[SearchResult | BaseException]) -> None:
    for i in range(n):
        try:
            out.append(client.search_vector(data_vectors[i % len(data_vectors)], k=5,
                                            timeout_s=3))
        except BaseException as exc:  # recorded and asserted on by the test
            out.append(exc)


def test_killing_one_replica_of_each_shard_fails_no_query(cluster: Cluster) -> None:
    results: list[SearchResult | BaseException] = []
    with CoordinatorClient(cluster.address) as client:
        worker = threading.Thread(
            target=query_stream, args=(client, cluster.data.vectors, 80, results))
        worker.start()
        assert wait_for(lambda: len(results) >= 10)
        cluster.stop_replica(0, 0, grace_s=None)  # abrupt: in-flight calls are cancelled
        assert wait_for(lambda: len(results) >= 30)
        cluster.stop_replica(1, 1, grace_s=None)
        worker.join(60)
    assert len(results) == 80
    failures = [r for r in results if isinstance(r, BaseException) or r.partial]
    assert failures == []
    for i, r in enumerate(results):
        assert isinstance(r, SearchResult)
        assert ids(r) == flat_top_k(cluster.data, cluster.data.vectors[i], 5)


def test_a_shard_without_replicas_gives_a_partial_answer_then_recovers(cluster: Cluster) -> None:
    q = cluster.data.vectors[0]
    shard0_only = flat_top_k(cluster.data, q, 200)
    shard0_only = [i for i in shard0_only if i % 2 == 0][:5]
    cluster.stop_replica(1, 0)
    cluster.stop_replica(1, 1)
    with CoordinatorClient(cluster.address) as client:
        for _ in range(5):
            result = client.search_vector(q, k=5, timeout_s=2)  # answered within the deadline
            assert result.partial and result.failed_shards == (1,)
            assert ids(result) == shard0_only
        assert client.info().live_replicas == {0: 2, 1: 0}  # both ejected
        cluster.start_replica(1, 0)
        cluster.start_replica(1, 1)
        # Ejected replicas are re-probed every 0.2 s here.
        assert wait_for(lambda: not client.search_vector(q, k=5, timeout_s=2).partial, 5)
        assert ids(client.search_vector(q, k=5)) == flat_top_k(cluster.data, q, 5)
        assert wait_for(lambda: client.info().live_replicas == {0: 2, 1: 2}, 5)


def test_every_shard_down_is_unavailable(cluster: Cluster) -> None:
    for shard in (0, 1):
        for r in (0, 1):
            cluster.stop_replica(shard, r)
    with CoordinatorClient(cluster.address) as client, \
            pytest.raises(Unavailable, match="no shard answered"):
        client.search_vector(cluster.data.vectors[0], k=5, timeout_s=2)


def test_image_id_on_a_downed_shard_is_unavailable(cluster: Cluster) -> None:
    target = next(int(i) for i in cluster.data.ids if i % 2 == 1)
    cluster.stop_replica(1, 0)
    cluster.stop_replica(1, 1)
    with CoordinatorClient(cluster.address) as client, \
            pytest.raises(Unavailable, match=f"shard 1, which holds image id {target}"):
        client.search_id(target, k=3, timeout_s=2)


def test_deadline_propagates_and_a_sleeping_shard_is_left_out(cluster: Cluster) -> None:
    for r in cluster.replicas[1]:
        r.servicer.delay_s = 5.0
    with CoordinatorClient(cluster.address) as client:
        result = client.search_vector(cluster.data.vectors[0], k=5, timeout_s=1.0)
    assert result.partial and result.failed_shards == (1,)
    seen = [t for r in cluster.replicas[1] for t in r.servicer.time_remaining]
    assert seen and all(t < 1.0 for t in seen)  # the shard got the caller's deadline


def test_hedging_rescues_queries_that_hit_a_slow_replica(loop_thread: LoopThread) -> None:
    # Round-robin, so queries do reach the slow replicas (p2c would learn to avoid them).
    cluster = start_cluster(loop_thread, hedge_after_ms=50, balancer_policy="round-robin")
    try:
        for shard in cluster.replicas:
            shard[0].servicer.delay_s = 3.0  # slower than the caller's deadline
        with CoordinatorClient(cluster.address) as client:
            results = [client.search_vector(cluster.data.vectors[i], k=5, timeout_s=1.0)
                       for i in range(12)]
        assert [r.partial for r in results] == [False] * 12
        hedges = cluster.coordinator.metrics.hedges
        assert sum(hedges.labels(str(s))._value.get() for s in (0, 1)) > 0
    finally:
        cluster.close()


def test_answers_never_mix_index_versions(loop_thread: LoopThread) -> None:
    # Shard 2 is mid-swap: one replica still on v1, the other on v2 like shards 0 and 1.
    cluster = start_cluster(loop_thread, num_shards=3, versions=["v2", "v2", "v1"],
                            balancer_policy="round-robin")  # both replicas get asked
    try:
        cluster.replicas[2][1].servicer.index_version = "v2"
        old = cluster.replicas[2][0].servicer
        with CoordinatorClient(cluster.address) as client:
            # Until the balancer has sent shard 2's query to its v1 replica at least once.
            for i in range(400):
                r = client.search_vector(cluster.data.vectors[i % 50], k=5)
                assert not r.partial and r.index_version == "v2"
                assert ids(r) == flat_top_k(cluster.data, cluster.data.vectors[i % 50], 5)
                if old.searches - len(old.pinned) >= 2:  # unpinned queries answered with v1
                    break
                time.sleep(0.02)
            assert old.searches - len(old.pinned) >= 2, "the v1 replica was never asked"
            # Its v1 answers were replaced by answers pinned to v2 from the other replica.
            assert cluster.replicas[2][1].servicer.pinned.count("v2") >= 2
            cluster.replicas[2][1].servicer.index_version = "v1"  # shard 2 holds v1 only
            r = client.search_vector(cluster.data.vectors[0], k=5)
            assert r.partial and r.failed_shards == (2,) and r.index_version == "v2"
            assert all(h.shard != 2 for h in r.hits)
    finally:
        cluster.close()


def test_image_queries_need_the_shards_model_version(loop_thread: LoopThread) -> None:
    cluster = start_cluster(loop_thread, embedder=FakeEmbedder(version="other-model"))
    try:
        with CoordinatorClient(cluster.address) as client:
            with pytest.raises(FailedPrecondition, match=r"fake-1.*other-model"):
                client.search_image(b"\x89PNG x", k=3)
            assert not client.search_vector(cluster.data.vectors[0], k=3).partial
    finally:
        cluster.close()


def test_metrics_count_requests_and_partial_answers(cluster: Cluster) -> None:
    cluster.stop_replica(1, 0)
    cluster.stop_replica(1, 1)
    with CoordinatorClient(cluster.address) as client:
        for _ in range(4):  # each tries both replicas of shard 1: 3 failures in a row eject
            client.search_vector(cluster.data.vectors[0], k=3)
    text = _exposition(cluster)
    assert 'cbir_coordinator_requests_total{code="OK",query="vector"} 4.0' in text
    assert "cbir_coordinator_partial_answers_total 4.0" in text
    assert 'cbir_coordinator_live_replicas{shard="1"} 0.0' in text
    assert 'cbir_coordinator_replica_ejections_total{replica=' in text


def _exposition(cluster: Cluster) -> str:
    from prometheus_client import generate_latest

    return generate_latest(cluster.coordinator.metrics.registry).decode()
