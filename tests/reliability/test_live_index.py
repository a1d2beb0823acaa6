"""The live index through real servers: ``cbir serve-shard`` subprocesses (2 shards x 2
replicas) with ``--wal`` on moto S3, in-process coordinators with ``--wal``, the Python client.
Every replica's answer is compared with a brute-force search over the set it must hold."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from cbir.client import CoordinatorClient, UpsertSpec
from cbir.ids import image_id, shard_of
from protos import cbir_pb2, cbir_pb2_grpc
from tests.build_index import fixtures as fx
from tests.reliability.cluster import (
    SHARDS,
    Coordinator,
    ShardProcess,
    Version,
)

K = 10
DIM = 50


@dataclass
class Expected:
    """What the cluster must hold: image id -> (key, vector)."""

    live: dict[int, tuple[str, np.ndarray]]

    @classmethod
    def of(cls, version: Version) -> Expected:
        keys = fx.keys_for(len(version.ids))
        return cls({int(i): (k, v) for i, k, v in zip(version.ids, keys, version.vectors,
                                                       strict=True)})

    def upsert(self, key: str, vector: np.ndarray) -> None:
        self.live[image_id(key)] = (key, vector)

    def delete(self, key: str) -> None:
        self.live.pop(image_id(key), None)

    def shard(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array(sorted(i for i in self.live if shard_of(i, SHARDS) == shard), np.int64)
        return ids, np.stack([self.live[int(i)][1] for i in ids]).astype(np.float32)

    def top_k(self, shard: int, query: np.ndarray) -> tuple[list[int], float]:
        """The exact top-k and the score gap at place k (tiny gaps are float-order noise)."""
        ids, vectors = self.shard(shard)
        scores = vectors @ query
        order = np.lexsort((ids, -scores.astype(np.float64)))
        ranked = scores[order]
        return [int(ids[i]) for i in order[:K]], float(ranked[K - 1] - ranked[K])


def replica_top_k(replica: ShardProcess, query: np.ndarray) -> list[int]:
    with grpc.insecure_channel(replica.address) as channel:
        reply = cbir_pb2_grpc.ShardStub(channel).Search(cbir_pb2.ShardSearchRequest(
            vectors=query.astype("<f4").tobytes(), dim=DIM, k=K), timeout=10)
    return [int(i) for i in np.frombuffer(reply.ids, "<i8") if i >= 0]


def replica_stats(replica: ShardProcess) -> cbir_pb2.StatsResponse:
    with grpc.insecure_channel(replica.address) as channel:
        return cbir_pb2_grpc.ShardStub(channel).Stats(cbir_pb2.StatsRequest(), timeout=10)


def eventually(check: Callable[[], bool], timeout_s: float = 15.0) -> float:
    """Seconds until ``check()`` held (fails the test after ``timeout_s``)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, "the cluster never reached the state"
        time.sleep(0.05)
    return time.monotonic() - start


def matches(replicas: list[list[ShardProcess]], expected: Expected,
            queries: np.ndarray) -> bool:
    for shard, row in enumerate(replicas):
        for query in queries:
            want, gap = expected.top_k(shard, query)
            if gap < 1e-4:
                continue
            if any(replica_top_k(r, query) != want for r in row):
                return False
    return True


def vec(seed: int) -> np.ndarray:
    return fx.random_vectors(1, DIM, seed)[0].astype(np.float32)


def test_upsert_delete_replace_visible_on_every_replica(
        live_cluster: tuple[list[list[ShardProcess]], str], glove_v1: Version) -> None:
    replicas, wal = live_cluster
    coordinator = Coordinator(replicas, wal=wal)
    expected = Expected.of(glove_v1)
    base_keys = fx.keys_for(len(glove_v1.ids))
    try:
        with CoordinatorClient(f"127.0.0.1:{coordinator.port}") as client:
            new = [(f"s3://photos/live/{i}.jpg", vec(100 + i)) for i in range(20)]
            results = client.upsert([UpsertSpec(k, vector=v) for k, v in new])
            assert [r.status for r in results] == ["ok"] * 20
            assert {r.shard for r in results} == {0, 1} and all(r.seq >= 1 for r in results)
            for key, v in new:
                expected.upsert(key, v)
            replaced = [(base_keys[i], vec(500 + i)) for i in range(10)]
            assert all(r.ok for r in client.upsert([UpsertSpec(k, vector=v)
                                                    for k, v in replaced]))
            for key, v in replaced:
                expected.upsert(key, v)
            gone = base_keys[10:20]
            deleted = client.delete(keys=gone[:5],
                                    image_ids=[image_id(k) for k in gone[5:]])
            assert all(r.ok for r in deleted)
            for key in gone:
                expected.delete(key)
            queries = np.stack([v for _, v in new[:5]] + [v for _, v in replaced[:5]]
                               + [glove_v1.vectors[i] for i in range(10, 20)])
            eventually(lambda: matches(replicas, expected, queries))
            # The new vector of a replaced image is found, never its old one.
            hit = client.search_vector(replaced[0][1], k=1).hits[0]
            assert (hit.image_id, hit.key) == (image_id(base_keys[0]), base_keys[0])
            old_hits = client.search_vector(glove_v1.vectors[0], k=K).hits
            assert image_id(base_keys[0]) not in [h.image_id for h in old_hits]
            assert not {image_id(k) for k in gone} & {
                h.image_id for q in queries for h in client.search_vector(q, k=K).hits}
            # A new image comes back with its key, and its stored vector is the new one.
            top = client.search_vector(new[0][1], k=1).hits[0]
            assert (top.key, round(top.score, 4)) == (new[0][0], 1.0)
            stats = [replica_stats(r) for row in replicas for r in row]
            assert sum(s.count for s in stats) == 2 * (len(glove_v1.ids) + 20 - 10)
            assert all(s.applied_seq >= 1 for s in stats)
    finally:
        coordinator.close()


def test_killed_replica_catches_up_to_its_peer(
        live_cluster: tuple[list[list[ShardProcess]], str], glove_v1: Version) -> None:
    replicas, wal = live_cluster
    coordinator = Coordinator(replicas, wal=wal)
    expected = Expected.of(glove_v1)
    victim = replicas[0][1]
    try:
        with CoordinatorClient(f"127.0.0.1:{coordinator.port}") as client:
            victim.kill()
            written = [(f"s3://photos/down/{i}.jpg", vec(900 + i)) for i in range(30)]
            for key, v in written:  # one entry each: the restarted replica replays them all
                assert client.upsert([UpsertSpec(key, vector=v)])[0].ok
                expected.upsert(key, v)
            removed = fx.keys_for(len(glove_v1.ids))[:40:2]
            assert all(r.ok for r in client.delete(keys=removed))
            for key in removed:
                expected.delete(key)
            victim.start()
            victim.wait_serving()
            queries = np.stack([v for _, v in written[:10]] + list(glove_v1.vectors[:20:2]))
            eventually(lambda: matches(replicas, expected, queries))
            peer = replica_stats(replicas[0][0])
            again = replica_stats(victim)
            assert (again.applied_seq, again.count) == (peer.applied_seq, peer.count)
    finally:
        coordinator.close()


def test_two_coordinators_writing_at_once_converge(
        live_cluster: tuple[list[list[ShardProcess]], str], glove_v1: Version) -> None:
    replicas, wal = live_cluster
    coordinators = [Coordinator(replicas, wal=wal) for _ in range(2)]
    expected = Expected.of(glove_v1)
    # Both write the same keys (different vectors): the log's order decides who wins.
    keys = [f"s3://photos/race/{i}.jpg" for i in range(12)]
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with CoordinatorClient(f"127.0.0.1:{coordinators[n].port}") as client:
                for i, key in enumerate(keys):
                    assert client.upsert([UpsertSpec(key, vector=vec(1000 * n + i))])[0].ok
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        eventually(lambda: len({replica_stats(r).applied_seq for row in replicas
                                for r in row}) <= SHARDS)
        # The winner of each key is whichever write the log holds last: read it from a
        # replica's stored vector, then every replica must answer like brute force over it.
        with grpc.insecure_channel(replicas[0][0].address) as c0, \
                grpc.insecure_channel(replicas[1][0].address) as c1:
            stubs = [cbir_pb2_grpc.ShardStub(c0), cbir_pb2_grpc.ShardStub(c1)]
            for key in keys:
                shard = shard_of(image_id(key), SHARDS)
                got = stubs[shard].GetVectors(cbir_pb2.GetVectorsRequest(
                    image_ids=[image_id(key)]), timeout=10)
                stored = np.frombuffer(got.vectors, "<f4")
                assert any(np.allclose(stored, vec(1000 * n + keys.index(key)), atol=1e-6)
                           for n in range(2))
                expected.upsert(key, stored.copy())
        queries = np.stack([expected.live[image_id(k)][1] for k in keys])
        eventually(lambda: matches(replicas, expected, queries))
        for shard, row in enumerate(replicas):
            stats = [replica_stats(r) for r in row]
            assert len({(s.applied_seq, s.count) for s in stats}) == 1, shard
        assert sum(replica_stats(row[0]).applied_seq for row in replicas) >= 2 * len(keys)
    finally:
        for c in coordinators:
            c.close()
