"""A small live index to compact: an embeddings run + a Flat index version built by the real
build, an index pointer naming it, a write-ahead log, and the state the log must produce
(computed directly: last write per id wins in log order)."""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np
import pyarrow.parquet as pq

from cbir import index_layout, storage
from cbir.ids import image_id, shard_of
from cbir.index_pointer import write_pointer
from cbir.schema import INDEX_MANIFEST, IndexManifest, ShardManifest, read_manifest
from cbir.wal import Delete, Operation, ShardLog, Upsert
from jobs.build_index.build import BuildConfig, build_index
from tests.build_index import fixtures as fx

SHARDS = 2
DIM = 16


@dataclass
class Expected:
    """image id -> (key, vector): what the index must hold after the log is folded in."""

    live: dict[int, tuple[str, np.ndarray]] = field(default_factory=dict)

    def apply(self, op: Operation) -> None:
        if isinstance(op, Upsert):
            self.live[op.image_id] = (op.key, op.vector)
        else:
            self.live.pop(op.image_id, None)


@dataclass
class LiveIndex:
    root: str  # where the run, the version and the pointer live
    pointer: str
    wal: str
    expected: Expected
    heads: list[int] = field(default_factory=lambda: [0] * SHARDS)  # last seq per shard

    def write(self, ops: list[Operation]) -> list[int]:
        """One log entry per shard touched (like a coordinator); returns their sequence numbers."""
        by_shard: dict[int, list[Operation]] = {}
        for op in ops:
            by_shard.setdefault(shard_of(op.image_id, SHARDS), []).append(op)
        seqs = []
        for shard, batch in sorted(by_shard.items()):
            seqs.append(ShardLog(self.wal, shard).append(batch, fx.MODEL_VERSION))
            self.heads[shard] = seqs[-1]
            for op in batch:
                self.expected.apply(op)
        return seqs


def make_live_index(root: str, n: int = 300, seed: int = 0) -> LiveIndex:
    keys = fx.keys_for(n)
    vectors = fx.random_vectors(n, DIM, seed)
    emb = storage.join(root, "v1-emb")
    fx.write_run(emb, fx.table(keys, vectors))
    version = storage.join(root, "indexes", "v1")
    build_index(BuildConfig(emb, version, SHARDS, "Flat"), show_progress=False)
    pointer = storage.join(root, "indexes", "CURRENT")
    write_pointer(pointer, version)
    expected = Expected({image_id(k): (k, v) for k, v in zip(keys, vectors, strict=True)})
    return LiveIndex(root, pointer, storage.join(root, "wal"), expected)


def upsert(key: str, seed: int) -> Upsert:
    return Upsert(image_id(key), key, fx.random_vectors(1, DIM, seed)[0])


def delete(key: str) -> Delete:
    return Delete(image_id(key))


def served(index_uri: str) -> dict[int, tuple[str, np.ndarray]]:
    """What a version holds: id -> (key, vector), read from its files (ids.parquet and the
    Faiss index itself)."""
    top = read_manifest(index_layout.index_manifest_uri(index_uri), IndexManifest)
    out: dict[int, tuple[str, np.ndarray]] = {}
    for shard in range(top.num_shards):
        index = faiss.deserialize_index(np.frombuffer(storage.read_bytes(
            index_layout.shard_file(index_uri, shard, index_layout.INDEX_FILE)), np.uint8))
        fs, path = storage.filesystem(index_layout.shard_file(index_uri, shard,
                                                              index_layout.IDS_FILE))
        table = pq.read_table(path, filesystem=fs)
        for i, key in zip(table.column("image_id").to_pylist(), table.column("key").to_pylist(),
                          strict=True):
            out[int(i)] = (str(key), np.asarray(index.reconstruct(int(i))))
        assert index.ntotal == table.num_rows
    return out


def shard_wal_seqs(index_uri: str) -> list[int]:
    return [read_manifest(index_layout.shard_file(index_uri, s, INDEX_MANIFEST),
                          ShardManifest).wal_seq for s in range(SHARDS)]


def assert_holds(index_uri: str, expected: Expected) -> None:
    got = served(index_uri)
    assert sorted(got) == sorted(expected.live)
    for i, (key, vector) in expected.live.items():
        assert got[i][0] == key
        np.testing.assert_allclose(got[i][1], vector, atol=1e-6)

