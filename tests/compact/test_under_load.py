"""Compaction under load (issue 10's acceptance test): 2 shards x 2 real ``cbir serve-shard``
replicas follow an index pointer and a write-ahead log on moto's S3, behind a real coordinator.
A stream of upserts, replacements, deletes and queries continues while ``cbir compact`` runs as
a subprocess (the real CLI) and the replicas roll to the version it builds. Afterwards:

- the new version holds exactly the acknowledged state at the log positions it recorded;
- every replica serves exactly the acknowledged state: each live id once (Stats count,
  GetVectors with the right vector), no deleted id, answers equal to brute force over it;
- writes acknowledged after those positions (during compaction) are there, applied once;
- no query failed or came back partial. The counts are printed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from cbir import index_layout, storage
from cbir.ids import image_id
from cbir.index_pointer import read_pointer, write_pointer
from cbir.schema import INDEX_MANIFEST, ShardManifest, read_manifest
from cbir.wal import ShardLog
from jobs.build_index.build import BuildConfig, build_index
from protos import cbir_pb2, cbir_pb2_grpc
from tests.build_index import fixtures as fx
from tests.compact.helpers import served
from tests.compact.load import SHARDS, State, WriteAndQueryLoad
from tests.reliability.cluster import ROOT, Coordinator, ShardProcess, start_replicas

pytestmark = pytest.mark.slow
N = 3000
K = 10


def _base(root: str) -> tuple[str, State]:
    keys = fx.keys_for(N)
    vectors = fx.glove(N)
    fx.write_run(storage.join(root, "v1-emb"), fx.table(keys, vectors))
    version = storage.join(root, "indexes", "v1")
    build_index(BuildConfig(storage.join(root, "v1-emb"), version, SHARDS, "Flat",
                            tune_queries=50), show_progress=False)
    return version, State({image_id(k): (k, v) for k, v in zip(keys, vectors, strict=True)})


def _stub(replica: ShardProcess) -> tuple[grpc.Channel, cbir_pb2_grpc.ShardStub]:
    channel = grpc.insecure_channel(replica.address)
    return channel, cbir_pb2_grpc.ShardStub(channel)


def _stats(replica: ShardProcess) -> cbir_pb2.StatsResponse:
    channel, stub = _stub(replica)
    with channel:
        return stub.Stats(cbir_pb2.StatsRequest(), timeout=10)


def _rolled(replicas: list[list[ShardProcess]], index: str, heads: list[int]) -> bool:
    return all(_stats(r).index_uri == index and _stats(r).applied_seq == heads[s]
               for s, row in enumerate(replicas) for r in row)


def _wait(check: object, what: str, timeout_s: float = 90.0) -> None:
    end = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def _compact_cli(pointer: str, wal: str, output: str, log: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-c", "import sys; from cbir.cli import main; sys.exit(main())",
           "compact", "--index-pointer", pointer, "--wal", wal, "--output", output,
           "--shards", str(SHARDS)]
    with log.open("w") as err:
        return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=err, text=True)


def _state_at(base: State, load: WriteAndQueryLoad, positions: list[int]) -> State:
    """The acknowledged state at the given log positions (one writer: ack order = log order)."""
    state = State(dict(base.live))
    for write in load.acked:
        if write.seq <= positions[write.shard]:
            state.apply(write)
    return state


def _check_version(index: str, base: State, load: WriteAndQueryLoad) -> list[int]:
    """The version holds the acknowledged state at its recorded positions, exactly; returns
    those positions."""
    folded = [read_manifest(index_layout.shard_file(index, s, INDEX_MANIFEST),
                            ShardManifest).wal_seq for s in range(SHARDS)]
    at_fold = _state_at(base, load, folded)
    holds = served(index)
    assert sorted(holds) == sorted(at_fold.live)
    for i, (key, vector) in at_fold.live.items():
        assert holds[i][0] == key
        np.testing.assert_allclose(holds[i][1], vector, atol=1e-6)
    return folded


def _check_replica(replica: ShardProcess, shard: int, state: State,
                   deleted: set[int], queries: np.ndarray) -> int:
    """Exactly ``state`` on this replica; returns how many answers were compared."""
    ids, vectors = state.shard(shard)
    channel, stub = _stub(replica)
    with channel:
        assert stub.Stats(cbir_pb2.StatsRequest(), timeout=10).count == len(ids)
        for start in range(0, len(ids), 1000):  # a request holds at most 1,024 ids
            chunk = ids[start:start + 1000].tolist()
            got = stub.GetVectors(cbir_pb2.GetVectorsRequest(image_ids=chunk), timeout=30)
            assert list(got.image_ids) == chunk and not got.missing_ids
            found = np.frombuffer(got.vectors, "<f4").reshape(len(chunk), -1)
            np.testing.assert_allclose(found, vectors[start:start + 1000], atol=1e-6)
        mine = [i for i in deleted if i % SHARDS == shard]
        gone = stub.GetVectors(cbir_pb2.GetVectorsRequest(image_ids=mine), timeout=30)
        assert not gone.image_ids and sorted(gone.missing_ids) == sorted(mine)
        compared = 0
        for query in queries:
            want, gap = state.top_k(shard, query, K)
            if gap < 1e-4:
                continue
            reply = stub.Search(cbir_pb2.ShardSearchRequest(
                vectors=query.astype("<f4").tobytes(), dim=len(query), k=K), timeout=10)
            hits = [int(i) for i in np.frombuffer(reply.ids, "<i8") if i >= 0]
            assert hits == want and not set(hits) & deleted
            compared += 1
    return compared


@dataclass
class Cluster:
    root: str
    pointer: str
    wal: str
    base: State
    replicas: list[list[ShardProcess]]
    coordinator: Coordinator


@pytest.fixture
def cluster(bucket: str, tmp_path: Path) -> Iterator[Cluster]:
    """2 shards x 2 replicas following an index pointer and a log on S3, and a coordinator."""
    root = f"s3://{bucket}"
    version, base = _base(root)
    pointer, wal = f"{root}/indexes/CURRENT", f"{root}/wal"
    write_pointer(pointer, version)
    source = ["--index-pointer", pointer, "--pointer-interval", "0.3"]
    replicas = start_replicas(lambda s: ShardProcess(
        s, source, tmp_path, ["--wal", wal, "--wal-interval", "0.2"]))
    coordinator = Coordinator(replicas, wal=wal)
    try:
        yield Cluster(root, pointer, wal, base, replicas, coordinator)
    finally:
        coordinator.close()
        for row in replicas:
            for r in row:
                r.stop()


def test_compaction_under_load(cluster: Cluster, tmp_path: Path) -> None:
    replicas, pointer, wal = cluster.replicas, cluster.pointer, cluster.wal
    fresh = fx.glove(4000, offset=N + 1000)
    with WriteAndQueryLoad(cluster.coordinator.port, cluster.base, fresh) as load:
        load.wait_writes(40)  # a log to fold
        proc = _compact_cli(pointer, wal, f"{cluster.root}/indexes/compacted",
                            tmp_path / "compact.log")
        out, _ = proc.communicate(timeout=300)
        compacted_at = time.monotonic()
        assert proc.returncode == 0, (tmp_path / "compact.log").read_text()
        assert '"compacted": true' in out
        index = read_pointer(pointer)
        _wait(lambda: all(_stats(r).index_uri == index for row in replicas for r in row),
              "every replica to roll to the compacted version")
        load.wait_writes(len(load.acked) + 30)  # writes on top of the new version
    counts = load.counts
    heads = [ShardLog(wal, s).last_seq() for s in range(SHARDS)]
    _wait(lambda: _rolled(replicas, index, heads), "every replica to apply the whole log")
    folded = _check_version(index, cluster.base, load)
    after = [w for w in load.acked if w.seq > folded[w.shard]]
    during = [w for w in after if w.at <= compacted_at]
    assert during, "no write arrived while compaction ran: the test proved nothing"
    queries = np.stack([v for _, v in list(load.state.live.values())[-60:]])
    compared = sum(_check_replica(r, s, load.state, load.deleted, queries)
                   for s, row in enumerate(replicas) for r in row)
    print(f"\ncompaction under load: {len(load.acked)} writes acknowledged "
          f"({counts.upserts} new, {counts.replaces} replaced, {counts.deletes} deleted, "
          f"{counts.write_retries} retries); folded up to {folded}, {len(after)} after "
          f"({len(during)} while compact ran); {len(load.state.live)} live ids present once "
          f"on every replica, 0 lost, 0 deleted returned; {compared} answers equal to brute "
          f"force; {counts.queries} queries, {counts.failed_queries} failed, {counts.partial} "
          f"partial")
    assert counts.failed_queries == 0 and counts.partial == 0, counts.errors[:5]
    assert counts.queries >= 50 and compared >= 50
