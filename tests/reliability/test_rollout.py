"""Index rollout under load: real ``cbir serve-shard`` processes (2 shards x 2 replicas)
watching an index pointer; the pointer flips v1 -> v2 while queries stream: no query fails,
none is partial, every answer is exactly one version's top-k, and after the roll every answer
is v2. Then the pointer names a v3 whose shard 1 is corrupt: shard 1 refuses it, the failure is
visible (log, Stats: the pointer's target differs from the index served), and every answer
stays v2. A manual LoadIndex cannot detach a replica from the pointer."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.pointer import read_pointer, write_pointer
from tests.build_index import fixtures as fx
from tests.reliability.cluster import (
    Coordinator,
    QueryLoad,
    ShardProcess,
    Version,
    build_version,
    query_pool,
    start_replicas,
)
from tests.reliability.conftest import N

pytestmark = pytest.mark.slow
PHASE_QUERIES = 700


def held(replica: ShardProcess) -> list[str]:
    with grpc.insecure_channel(replica.address) as channel:
        stats = cbir_pb2_grpc.ShardStub(channel).Stats(cbir_pb2.StatsRequest(), timeout=5)
    return list(stats.held_versions)


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def answered_during(load: QueryLoad, queries: int) -> Counter[str]:
    """Versions of the answers to the queries sent from now on, once ``queries`` more answered
    (a query sent before now may still answer in the version it was pinned to: not counted)."""
    start = time.monotonic()
    load.wait_for(load.report.queries + queries)
    return load.versions_sent_since(start)


def corrupt(version: Version, shard: int) -> None:
    path = Path(version.root) / f"shard={shard:03d}" / "index.faiss"
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_pointer_rollout_under_load(glove_v1: Version, glove_v2: Version,
                                    tmp_path: Path) -> None:
    v3 = build_version(tmp_path, "v3", fx.glove(N + 1500))
    corrupt(v3, shard=1)
    pointer = str(tmp_path / "indexes" / "CURRENT")
    write_pointer(pointer, glove_v1.root)
    # Every version lives in its own pytest temp folder: allow their common parent.
    source = ["--index-pointer", pointer, "--pointer-interval", "0.3",
              "--keep-previous-seconds", "120",
              "--allowed-index-root", str(Path(glove_v1.root).parents[1])]
    replicas = start_replicas(lambda s: ShardProcess(s, source, tmp_path))
    flat = [r for row in replicas for r in row]
    coordinator = Coordinator(replicas)
    pinned = coordinator.server.fanout.pinned_version
    try:
        pool = query_pool([glove_v1, glove_v2], 300)
        with QueryLoad(coordinator.port, pool, [glove_v1, glove_v2]) as load:
            before = answered_during(load, PHASE_QUERIES)
            write_pointer(pointer, glove_v2.root)  # the roll: one atomic write
            wait_until(lambda: all(held(r)[0] == glove_v2.version for r in flat), "v2 loaded")
            wait_until(lambda: pinned() == glove_v2.version, "coordinator on v2")
            after = answered_during(load, PHASE_QUERIES)

            write_pointer(pointer, v3.root)  # shard 1 of v3 is corrupt
            wait_until(lambda: all(held(r)[0] == v3.version for r in replicas[0]),
                       "shard 0 loaded v3")
            wait_until(lambda: all("refused, still serving" in r.logs() for r in replicas[1]),
                       "shard 1 refused v3")
            during_v3 = answered_during(load, PHASE_QUERIES)
            report = load.stop()
        with grpc.insecure_channel(replicas[1][0].address) as channel:
            drift = cbir_pb2_grpc.ShardStub(channel).Stats(cbir_pb2.StatsRequest(), timeout=5)
            with pytest.raises(grpc.RpcError) as refused:  # no admin credential on this port
                cbir_pb2_grpc.ShardStub(channel).LoadIndex(
                    cbir_pb2.LoadIndexRequest(index_uri=glove_v1.root), timeout=30)
        print(f"\nrollout: queries={report.queries} failed={report.failed} "
              f"partial={report.partial} wrong={report.wrong} by_version="
              f"{ {v[:10]: n for v, n in report.by_version.items()} } "
              f"version_retries="
              f"{coordinator.metric('cbir_coordinator_version_retries_total'):.0f} "
              f"shard 1 serves {drift.index_uri} while the pointer names {drift.pointer_target}; "
              f"manual LoadIndex: {refused.value.code().name}")
        assert report.failed == 0, report.errors[:5]
        assert report.partial == 0, report.errors[:5]
        assert report.wrong == 0, report.errors[:5]  # every answer = one version's exact top-k
        assert set(report.by_version) == {glove_v1.version, glove_v2.version}
        assert set(before) == {glove_v1.version}
        assert set(after) == {glove_v2.version}
        assert set(during_v3) == {glove_v2.version}  # v3 is incomplete: never answered
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (drift.index_uri, drift.pointer_target) == (glove_v2.root, v3.root)  # visible
        assert all(held(r)[0] == glove_v2.version for r in replicas[1])
        assert read_pointer(pointer) == v3.root
    finally:
        coordinator.close()
        for r in flat:
            r.stop()
