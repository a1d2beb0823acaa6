"""The write API's edges through real in-process servers (shard servers with ``--wal`` on a
local log, a coordinator with and without ``--wal``): per-item errors, refused requests, and
index rolls that rebuild the live view from the new version's ``wal_seq``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from cbir.client import CoordinatorClient, UpsertSpec
from cbir.errors import FailedPrecondition, InvalidArgument
from cbir.ids import image_id, shard_of
from cbir.rpc.auth import AuthConfig
from cbir.rpc.security import ServerSecurity
from coordinator.config import CoordinatorConfig
from coordinator.server import CoordinatorServer
from coordinator.topology import StaticTopology
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.server import ShardServer, serve_in_thread
from tests.coordinator.harness import LoopThread, wait_for
from tests.shard_server.conftest import DIM, SHARDS, BuiltIndex, build, config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> BuiltIndex:
    return build(tmp_path_factory.mktemp("live"), "live", n=300)


def start(loop_thread: LoopThread, root: str, wal: str, coordinator_wal: str
          ) -> tuple[CoordinatorServer, list[ShardServer]]:
    async def run() -> tuple[CoordinatorServer, list[ShardServer]]:
        shards = [ShardServer(config(root, shard=s, wal=wal, wal_interval_s=0.2))
                  for s in range(SHARDS)]
        for s in shards:
            await s.start()
        topology = {s: (f"127.0.0.1:{r.port}",) for s, r in enumerate(shards)}
        cfg = CoordinatorConfig(num_shards=SHARDS, port=0, resolve_interval_s=0.5,
                                image_queries=False, wal=coordinator_wal)
        coordinator = CoordinatorServer(cfg, StaticTopology(topology), None)
        await coordinator.start()
        await asyncio.wait_for(coordinator.ready.wait(), 30)
        return coordinator, shards

    return loop_thread.run(run(), timeout=120)


@pytest.fixture
def live(loop_thread: LoopThread, index: BuiltIndex, tmp_path: Path
         ) -> Iterator[tuple[str, list[ShardServer], str]]:
    wal = str(tmp_path / "wal")
    coordinator, shards = start(loop_thread, index.root, wal, wal)
    yield f"127.0.0.1:{coordinator.port}", shards, wal
    loop_thread.run(coordinator.stop(0))
    for s in shards:
        loop_thread.run(s.stop(0))


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_per_item_errors_and_refused_requests(live: tuple[str, list[ShardServer], str]) -> None:
    address, _, _ = live
    with CoordinatorClient(address) as client:
        results = client.upsert([
            UpsertSpec("s3://b/good.jpg", vector=unit(1)),
            UpsertSpec("s3://b/short.jpg", vector=[1.0, 2.0]),
            UpsertSpec("s3://b/nan.jpg", vector=[float("nan")] * DIM),
            UpsertSpec("http://b/not-s3.jpg", vector=unit(2)),
            UpsertSpec("s3://b/folder/", vector=unit(2)),
        ])
        assert [r.status for r in results] == ["ok", "error", "error", "error", "error"]
        assert "dim" in results[1].reason and "NaN" in results[2].reason
        assert "s3://" in results[3].reason and "names no object" in results[4].reason
        assert results[0].image_id == image_id("s3://b/good.jpg") and results[0].seq >= 1
        deleted = client.delete(keys=["s3://b/never-there.jpg"], image_ids=[5, -1])
        assert [r.status for r in deleted] == ["ok", "ok", "error"]
        with pytest.raises(InvalidArgument, match="no items"):
            client.upsert([])
        hit = client.search_vector(unit(1), k=1).hits[0]
        assert (hit.key, hit.image_id) == ("s3://b/good.jpg", results[0].image_id)


def test_writes_are_off_without_wal(loop_thread: LoopThread, index: BuiltIndex,
                                    tmp_path: Path) -> None:
    coordinator, shards = start(loop_thread, index.root, str(tmp_path / "wal"), "")
    try:
        with CoordinatorClient(f"127.0.0.1:{coordinator.port}") as client, \
                pytest.raises(FailedPrecondition, match="--wal"):
            client.upsert([UpsertSpec("s3://b/x.jpg", vector=unit(3))])
    finally:
        loop_thread.run(coordinator.stop(0))
        for s in shards:
            loop_thread.run(s.stop(0))


def top_key(loop_thread: LoopThread, shard: ShardServer, query: np.ndarray) -> str:
    """The replica's own top hit (the coordinator pins one version across shards; only shard
    0 rolls here)."""
    result = loop_thread.run(shard.searcher.search(query.astype("<f4").tobytes(), DIM, 1, {}))
    return result.keys[0]


def _copy_with_wal_seq(root: str, dest: Path, wal_seq: dict[int, int]) -> str:
    shutil.copytree(root, dest)
    for shard, seq in wal_seq.items():
        manifest = dest / f"shard={shard:03d}" / "manifest.json"
        doc = json.loads(manifest.read_text())
        doc["wal_seq"] = seq
        doc["index_version"] = doc["index_version"] + "-rolled"
        manifest.write_text(json.dumps(doc))
    return str(dest)


def test_an_index_roll_rebuilds_the_view_from_the_new_versions_wal_seq(
        loop_thread: LoopThread, live: tuple[str, list[ShardServer], str],
        index: BuiltIndex, tmp_path: Path) -> None:
    address, shards, _ = live
    key = next(f"s3://b/roll-{i}.jpg" for i in range(100)
               if shard_of(image_id(f"s3://b/roll-{i}.jpg"), SHARDS) == 0)
    with CoordinatorClient(address) as client:
        first = client.upsert([UpsertSpec(key, vector=unit(7))])[0]
        assert first.ok and first.shard == 0
        assert client.search_vector(unit(7), k=1).hits[0].key == key
        # The same base, rolled in twice: folding nothing (wal_seq 0) keeps the write; a
        # version that claims to have folded entry `first.seq` does not apply it again (and,
        # here, does not hold it: the roll trusts the manifest).
        keeps = _copy_with_wal_seq(index.root, tmp_path / "v-keeps", {0: 0})
        loop_thread.run(shards[0].searcher.load(keeps))
        assert shards[0].searcher.store.current().live.get().applied_seq == first.seq
        assert top_key(loop_thread, shards[0], unit(7)) == key
        folded = _copy_with_wal_seq(index.root, tmp_path / "v-folded", {0: first.seq})
        loop_thread.run(shards[0].searcher.load(folded))
        view = shards[0].searcher.store.current().live.get()
        assert view.applied_seq == first.seq and view.delta.live_count == 0
        second = client.upsert([UpsertSpec(key, vector=unit(8))])[0]
        assert second.seq == first.seq + 1
        wait_for(lambda: top_key(loop_thread, shards[0], unit(8)) == key)
        assert shards[0].searcher.store.current().live.get().applied_seq == second.seq


def test_apply_log_needs_the_write_role_when_tokens_are_configured(
        index: BuiltIndex, tmp_path: Path) -> None:
    search_token, write_token = "search-token-0123456789ab", "write-token-0123456789abc"
    cfg = config(index.root, wal=str(tmp_path / "wal"))
    with serve_in_thread(cfg) as open_server, \
            grpc.insecure_channel(f"127.0.0.1:{open_server.port}") as channel:
        # Without tokens, ApplyLog is open like Search (it only makes the replica read the log).
        reply = cbir_pb2_grpc.ShardStub(channel).ApplyLog(cbir_pb2.ApplyLogRequest(seq=0))
        assert reply.applied_seq == 0
    auth = AuthConfig.from_tokens([(search_token, ["search"]), (write_token, ["write"])])
    guarded = dataclasses.replace(cfg, security=ServerSecurity(auth=auth))
    with serve_in_thread(guarded) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = cbir_pb2_grpc.ShardStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ApplyLog(cbir_pb2.ApplyLogRequest(seq=1),
                          metadata=[("authorization", f"Bearer {search_token}")])
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        reply = stub.ApplyLog(cbir_pb2.ApplyLogRequest(seq=1),
                              metadata=[("authorization", f"Bearer {write_token}")])
        assert reply.applied_seq == 0  # nothing in the log yet: catching up is a no-op
