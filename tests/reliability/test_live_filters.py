"""Filters over live writes through real servers: ``cbir serve-shard`` subprocesses (2 shards x
2 replicas) over an index with metadata columns, following a write-ahead log on moto S3, and an
in-process coordinator with ``--wal``. Upserts carry attributes; every replica's filtered answer
must equal a brute-force search over the rows it must hold that pass the filter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest

from cbir import storage
from cbir.client import CoordinatorClient, UpsertSpec
from cbir.ids import image_id, shard_of
from cbir.wal import ShardLog
from protos import cbir_pb2, cbir_pb2_grpc
from tests.build_index import fixtures as fx
from tests.reliability.cluster import SHARDS, Coordinator, ShardProcess, start_replicas
from tests.reliability.test_live_index import eventually
from tests.shard_server import filter_fixtures as ff

K = 10
Row = dict[str, Any]
Passes = Callable[[Row], bool]


@pytest.fixture(scope="module")
def meta_index(tmp_path_factory: pytest.TempPathFactory) -> ff.MetaIndex:
    return ff.build_meta_index(tmp_path_factory.mktemp("live-meta"), "photos", fx.glove(1500),
                               "Flat", num_shards=SHARDS, seed=7)


@pytest.fixture
def cluster(meta_index: ff.MetaIndex, bucket: str, tmp_path: Path
            ) -> Iterator[tuple[list[list[ShardProcess]], Coordinator, str]]:
    wal = f"s3://{bucket}/wal"
    replicas = start_replicas(lambda s: ShardProcess(
        s, ["--index", meta_index.root], tmp_path, ["--wal", wal, "--wal-interval", "0.2"]))
    coordinator = Coordinator(replicas, wal=wal)
    try:
        yield replicas, coordinator, wal
    finally:
        coordinator.close()
        for row in replicas:
            for r in row:
                r.stop()


class Expected:
    """image id -> (vector, metadata row) of everything the cluster must hold."""

    def __init__(self, index: ff.MetaIndex) -> None:
        rows = index.table.select(["image_id", "key", "width", "pct"]).to_pylist()
        labels = index.table.column("attributes").to_pylist()
        self.rows: dict[int, tuple[np.ndarray, Row]] = {}
        for row, attrs, vector in zip(rows, labels, index.vectors, strict=True):
            row["label"] = dict(attrs).get("label")
            self.rows[row["image_id"]] = (vector, row)

    def upsert(self, key: str, vector: np.ndarray, attrs: dict[str, str]) -> None:
        pct = int(attrs["pct"]) if "pct" in attrs else None
        self.rows[image_id(key)] = (vector, {"image_id": image_id(key), "key": key,
                                             "width": None, "pct": pct,
                                             "label": attrs.get("label")})

    def delete(self, key: str) -> None:
        self.rows.pop(image_id(key), None)

    def top_k(self, shard: int, passes: Passes, query: np.ndarray) -> tuple[list[int], float]:
        """Exact filtered top-k of a shard and the score gap at place k (0 = ambiguous)."""
        ids = np.array(sorted(i for i, (_, row) in self.rows.items()
                              if shard_of(i, SHARDS) == shard and passes(row)), np.int64)
        scores = np.stack([self.rows[int(i)][0] for i in ids]) @ query
        order = np.lexsort((ids, -scores.astype(np.float64)))
        ranked = scores[order]
        gap = float(ranked[K - 1] - ranked[K]) if len(ranked) > K else 1.0
        return ids[order[:K]].tolist(), gap


FILTERS: list[tuple[str, Passes]] = [
    ("label = 'cat'", lambda r: r["label"] == "cat"),
    ("pct < 10", lambda r: r["pct"] is not None and r["pct"] < 10),
    ("label IN ('dog', 'bird') AND pct < 500",
     lambda r: r["label"] in ("dog", "bird") and r["pct"] is not None and r["pct"] < 500),
    ("width IS NULL", lambda r: r["width"] is None),
    ("key LIKE 's3://photos/live/%'", lambda r: r["key"].startswith("s3://photos/live/")),
    # '_' is a LIKE wildcard: a key prefix holding one escapes it (docs/filters.md)
    ("key LIKE 's3://photos/live/odd\\_%'",
     lambda r: r["key"].startswith("s3://photos/live/odd_")),
]


def replica_search(replica: ShardProcess, query: np.ndarray, text: str) -> list[int]:
    with grpc.insecure_channel(replica.address) as channel:
        reply = cbir_pb2_grpc.ShardStub(channel).Search(cbir_pb2.ShardSearchRequest(
            vectors=query.astype("<f4").tobytes(), dim=query.shape[0], k=K, filter=text),
            timeout=10)
    return [int(i) for i in np.frombuffer(reply.ids, "<i8") if i >= 0]


def all_match(replicas: list[list[ShardProcess]], expected: Expected,
              queries: np.ndarray) -> bool:
    for shard, row in enumerate(replicas):
        for text, passes in FILTERS:
            for query in queries:
                want, gap = expected.top_k(shard, passes, query)
                if gap < 1e-4:
                    continue
                if any(replica_search(r, query, text) != want for r in row):
                    return False
    return True


def test_filters_cover_live_upserts_replacements_and_deletes(
        cluster: tuple[list[list[ShardProcess]], Coordinator, str],
        meta_index: ff.MetaIndex) -> None:
    replicas, coordinator, _ = cluster
    expected = Expected(meta_index)
    base_keys = fx.keys_for(len(meta_index.ids), bucket="photos")
    rng = np.random.default_rng(11)
    vectors = fx.random_vectors(60, 50, seed=12)
    labels = ["cat", "dog", "bird"]
    new = [(f"s3://photos/live/{'odd_' if i % 2 else 'even_'}{i}.jpg", vectors[i],
            {"label": labels[i % 3], **({"pct": str(i % 20)} if i % 2 else {})})
           for i in range(30)]
    replaced = [(base_keys[i], vectors[30 + i], {"label": "dog", "pct": "7"}) for i in range(10)]
    with CoordinatorClient(f"127.0.0.1:{coordinator.port}") as client:
        specs = [UpsertSpec(k, vector=v, attributes=a) for k, v, a in new + replaced]
        bad = UpsertSpec("s3://photos/live/bad.jpg", vector=vectors[59],
                         attributes={"pct": "seven"})
        results = client.upsert([*specs, bad])
        assert all(r.ok for r in results[:-1]), [r.reason for r in results if not r.ok]
        assert not results[-1].ok and "'pct'" in results[-1].reason
        assert "is not a int32" in results[-1].reason
        for key, vector, attrs in new + replaced:
            expected.upsert(key, vector, attrs)
        gone = base_keys[10:25]
        assert all(r.ok for r in client.delete(keys=gone))
        for key in gone:
            expected.delete(key)
        # A row the delta holds is replaced again (new label) and one is deleted.
        again = (new[0][0], vectors[50], {"label": "bird", "pct": "3"})
        assert client.upsert([UpsertSpec(again[0], vector=again[1], attributes=again[2])])[0].ok
        expected.upsert(*again)
        assert client.delete(keys=[new[1][0]])[0].ok
        expected.delete(new[1][0])
        queries = np.stack([vectors[i] for i in (0, 2, 3, 30, 31, 50)]
                           + [meta_index.vectors[i] for i in (10, 11, 40)]
                           + list(fx.random_vectors(3, 50, seed=int(rng.integers(1000)))))
        eventually(lambda: all_match(replicas, expected, queries), timeout_s=30)
        # Through the coordinator too: fan-out + merge of the filtered shard answers.
        for text, passes in FILTERS:
            got = [h.image_id for h in client.search_vector(vectors[30], k=K,
                                                             filter=text).hits]
            merged = sorted((i for s in range(SHARDS)
                             for i in expected.top_k(s, passes, vectors[30])[0]),
                            key=lambda i: (-float(expected.rows[i][0] @ vectors[30]), i))
            assert got == merged[:K], text
        assert image_id(new[1][0]) not in {h.image_id for h in client.search_vector(
            vectors[1], k=K, filter="key LIKE 's3://photos/live/%'").hits}
    check_stats_and_vectors(replicas, expected, again)


def check_stats_and_vectors(replicas: list[list[ShardProcess]], expected: Expected,
                            again: tuple[str, np.ndarray, dict[str, str]]) -> None:
    """Stats count the live rows and keep the base's filter columns; GetVectors answers the
    newest vector of a row the delta replaced."""
    for shard, row in enumerate(replicas):
        want = sum(1 for i in expected.rows if shard_of(i, SHARDS) == shard)
        for replica in row:
            with grpc.insecure_channel(replica.address) as channel:
                stub = cbir_pb2_grpc.ShardStub(channel)
                stats = stub.Stats(cbir_pb2.StatsRequest(), timeout=10)
                assert stats.count == want
                assert {c.name for c in stats.metadata_columns} >= {"label", "pct", "width"}
                if shard == shard_of(image_id(again[0]), SHARDS):
                    reply = stub.GetVectors(cbir_pb2.GetVectorsRequest(
                        image_ids=[image_id(again[0])]), timeout=10)
                    got = np.frombuffer(reply.vectors, "<f4")
                    np.testing.assert_allclose(got, again[1], atol=1e-6)


def old_format_entry(seq: int, shard: int, key: str, vector: np.ndarray) -> bytes:
    """A log entry as the first writers wrote it: no object metadata columns."""
    table = pa.table({
        "op": pa.array([0], pa.int8()), "image_id": pa.array([image_id(key)], pa.int64()),
        "key": pa.array([key]), "vector": pa.array([vector.tolist()], pa.list_(pa.float32())),
        "attributes": pa.array(['{"label": "cat"}']),
    }).replace_schema_metadata({"cbir.wal.format": "1", "cbir.wal.seq": str(seq),
                                "cbir.wal.shard": str(shard),
                                "cbir.model_version": fx.MODEL_VERSION})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def test_old_log_entries_without_metadata_still_apply(
        cluster: tuple[list[list[ShardProcess]], Coordinator, str]) -> None:
    """An entry in the first log format applies (its metadata is null) next to new ones; a
    timestamp filter treats the delta's null last_modified as SQL does."""
    replicas, coordinator, wal = cluster
    key = "s3://photos/live/old-format.jpg"
    shard = shard_of(image_id(key), SHARDS)
    vector = fx.random_vectors(1, 50, seed=77)[0]
    log = ShardLog(wal, shard)
    seq = log.last_seq() + 1
    assert storage.create_if_absent(log.uri_of(seq), old_format_entry(seq, shard, key, vector))
    for replica in replicas[shard]:
        def applied(r: ShardProcess = replica) -> bool:
            return replica_search(r, vector, "")[:1] == [image_id(key)]

        eventually(applied)
        assert replica_search(replica, vector, "label = 'cat' AND width IS NULL")[:1] == [
            image_id(key)]
        assert image_id(key) not in replica_search(replica, vector, "label = 'dog'")
    other = fx.random_vectors(1, 50, seed=78)[0]
    with CoordinatorClient(f"127.0.0.1:{coordinator.port}") as client:
        assert client.upsert([UpsertSpec("s3://photos/live/new.jpg", vector=other)])[0].ok
        hits = client.search_vector(other, k=K, filter="last_modified >= '2000-01-01'").hits
        assert hits and "s3://photos/live/new.jpg" not in {h.key for h in hits}
        top = client.search_vector(other, k=1, filter="last_modified IS NULL").hits
        assert [h.key for h in top] == ["s3://photos/live/new.jpg"]
