"""The result cache never serves a stale answer, through real parts: ``cbir serve-shard``
subprocesses (2 shards x 2 replicas) following a write-ahead log on moto S3, in-process
coordinators with the result cache on, the Python client. Writes go through the cached
coordinator AND through a second one; index rolls flip the replicas' pointer. Every answer of
the cached coordinator is checked against brute force over the set the cluster must hold (a
filtered one against an uncached coordinator's fresh answer), repeated so the cache answers."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from cbir.cache import APPLIED_SEQ_METADATA
from cbir.client import CoordinatorClient, Hit, UpsertSpec, WriteResult
from cbir.errors import NotFound
from cbir.ids import image_id, shard_of
from coordinator.config import CacheConfig
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.pointer import write_pointer
from tests.build_index import fixtures as fx
from tests.reliability.cluster import (
    SHARDS,
    Coordinator,
    ShardProcess,
    Version,
    query_pool,
    start_replicas,
)
from tests.reliability.test_live_index import Expected, eventually, replica_stats

K = 10
TAIL_S = 0.2  # the cached coordinator's --wal-tail-interval
SLACK_S = 2.0  # one LIST on moto and loop turns, on a machine shared with other work
FILTER = "key LIKE 's3://photos/img/000%'"  # a third of the base rows
HIT = {"cache": "result", "result": "hit"}


@dataclass
class Tally:
    asked: int = 0
    stale: list[str] = field(default_factory=list)

    def check(self, fresh: bool, what: str) -> None:
        self.asked += 1
        if not fresh:
            self.stale.append(what)


def brute_force(expected: Expected, query: np.ndarray) -> tuple[list[int], np.ndarray]:
    """The exact global top-k over what the cluster must hold (ties by smaller id)."""
    ids = np.fromiter(expected.live, np.int64)
    vectors = np.stack([expected.live[int(i)][1] for i in ids]).astype(np.float32)
    scores = vectors @ query
    order = np.lexsort((ids, -scores.astype(np.float64)))[:K]
    return [int(ids[i]) for i in order], scores[order]


def is_fresh(hits: Sequence[Hit], expected: Expected, query: np.ndarray) -> bool:
    """The answer is brute force's, up to the order of near-equal scores: every hit is live
    with the score its current vector gives, and the score lists agree. A deleted image, an
    old vector or a missing upsert all fail this."""
    want_ids, want_scores = brute_force(expected, query)
    got = [h.image_id for h in hits]
    if got == want_ids:
        return True
    if len(got) != len(want_ids):
        return False
    for h in hits:
        live = expected.live.get(h.image_id)
        if live is None or abs(float(live[1] @ query) - h.score) > 1e-4:
            return False
    return bool(np.allclose(sorted((h.score for h in hits), reverse=True), want_scores,
                            atol=1e-4))


def near(target: np.ndarray, seed: int) -> np.ndarray:
    """A vector close to ``target``: it becomes that query's top hit."""
    v = target + 0.05 * np.random.default_rng(seed).standard_normal(target.shape)
    return (v / np.linalg.norm(v)).astype(np.float32)


class Scenario:
    """The cluster's expected content, the writes that change it, and the checked queries."""

    def __init__(self, expected: Expected, queries: np.ndarray, id_keys: list[str],
                 cached: CoordinatorClient, uncached: CoordinatorClient | None) -> None:
        self.expected = expected
        self.queries = queries
        self.id_keys = id_keys
        self.cached = cached
        self.uncached = uncached
        self.tally = Tally()

    def upsert(self, client: CoordinatorClient, key: str, vector: np.ndarray
               ) -> list[WriteResult]:
        self.expected.upsert(key, vector)
        return client.upsert([UpsertSpec(key, vector=vector)])

    def delete(self, client: CoordinatorClient, key: str) -> list[WriteResult]:
        self.expected.delete(key)
        return client.delete(keys=[key])

    def top_key(self, query: int) -> str:
        return self.expected.live[brute_force(self.expected, self.queries[query])[0][0]][0]

    def filtered_top_key(self) -> str:
        assert self.uncached is not None
        hit = self.uncached.search_vector(self.queries[0], k=K, filter=FILTER).hits[0]
        return hit.key

    def ask_all(self, label: str) -> None:
        """Every query once: by vector, by image id, filtered."""
        for i, q in enumerate(self.queries):
            got = self.cached.search_vector(q, k=K)
            self.tally.check(is_fresh(got.hits, self.expected, q), f"{label} vector {i}")
        for key in self.id_keys:
            self._ask_id(key, label)
        if self.uncached is not None:
            got = self.cached.search_vector(self.queries[0], k=K, filter=FILTER)
            fresh = self.uncached.search_vector(self.queries[0], k=K, filter=FILTER)
            self.tally.check([h.image_id for h in got.hits] == [h.image_id for h in fresh.hits],
                             f"{label} filtered")

    def _ask_id(self, key: str, label: str) -> None:
        live = self.expected.live.get(image_id(key))
        try:
            got = self.cached.search_id(image_id(key), k=K)
        except NotFound:
            self.tally.check(live is None, f"{label} id {key} not found")
            return
        self.tally.check(live is not None and is_fresh(got.hits, self.expected, live[1]),
                         f"{label} id {key}")


def reported_positions(replica: ShardProcess, query: np.ndarray, known_id: int
                       ) -> tuple[int, int, int]:
    """(Search's applied_seq, GetVectors' trailing applied seq, Stats.applied_seq)."""
    with grpc.insecure_channel(replica.address) as channel:
        stub = cbir_pb2_grpc.ShardStub(channel)
        search = stub.Search(cbir_pb2.ShardSearchRequest(
            vectors=query.astype("<f4").tobytes(), dim=len(query), k=K), timeout=10)
        _, call = stub.GetVectors.with_call(cbir_pb2.GetVectorsRequest(image_ids=[known_id]),
                                            timeout=10)
        trailing = dict(call.trailing_metadata() or ())
    return (search.applied_seq, int(trailing[APPLIED_SEQ_METADATA]),
            replica_stats(replica).applied_seq)


def knows(coordinator: Coordinator, results: list[WriteResult]) -> bool:
    """The coordinator's cache keys already carry these writes' log positions."""
    return all(coordinator.server.positions.known[r.shard] >= r.seq for r in results)


def wait_applied(replicas: list[list[ShardProcess]], results: list[WriteResult]) -> None:
    """Every replica of each written shard has applied the write (the replicas' visibility,
    which bounds what any uncached answer can show)."""
    assert results and all(r.ok for r in results), results
    for r in results:
        eventually(lambda r=r: all(replica_stats(p).applied_seq >= r.seq  # type: ignore[misc]
                                   for p in replicas[r.shard]))


Step = tuple[str, Callable[[CoordinatorClient], list[WriteResult]]]


def steps(s: Scenario, moving: str, born: str) -> list[Step]:
    """Writes that change the checked answers, alternately through the cached coordinator
    ("this") and the other one ("other")."""
    q = s.queries
    return [
        ("this", lambda c: s.upsert(c, born, near(q[0], 1))),
        ("other", lambda c: s.upsert(c, "s3://photos/cache/n1.jpg", near(q[1], 2))),
        ("this", lambda c: s.delete(c, s.top_key(2))),
        ("other", lambda c: s.upsert(c, moving, near(q[1], 3))),  # replaces a base vector
        ("this", lambda c: s.delete(c, s.filtered_top_key())),
        ("other", lambda c: s.delete(c, born)),
        ("this", lambda c: s.upsert(c, moving, near(q[2], 4))),
        ("other", lambda c: s.delete(c, s.top_key(3))),
        ("this", lambda c: s.delete(c, moving)),
        ("other", lambda c: s.upsert(c, moving, near(q[0], 5))),  # back again
        ("this", lambda c: s.upsert(c, born, near(q[3], 6))),
        ("other", lambda c: s.delete(c, s.filtered_top_key())),
    ]


def test_cached_answers_follow_writes_through_this_and_another_coordinator(
        live_cluster: tuple[list[list[ShardProcess]], str], glove_v1: Version) -> None:
    replicas, wal = live_cluster
    # A slow Stats poll: the log tail alone must teach the other coordinator's writes.
    cached = Coordinator(replicas, wal=wal, wal_tail_interval_s=TAIL_S, version_interval_s=5.0)
    coordinators = [cached, Coordinator(replicas, wal=wal),
                    Coordinator(replicas, cache=CacheConfig(0, 0))]
    base_keys = fx.keys_for(len(glove_v1.ids))
    moving, born = base_keys[7], "s3://photos/cache/born.jpg"
    clients = [CoordinatorClient(f"127.0.0.1:{c.port}", timeout_s=10) for c in coordinators]
    try:
        eventually(lambda: cached.server.fanout.pinned_version() is not None, 30)
        s = Scenario(Expected.of(glove_v1), query_pool([glove_v1], 4),
                     [moving, born, base_keys[100]], clients[0], clients[2])
        s.ask_all("before")
        learned_s: list[float] = []  # other coordinator's ack -> this one's keys know it
        for n, (through, write) in enumerate(steps(s, moving, born)):
            results = write(clients[0] if through == "this" else clients[1])
            acked_at = time.monotonic()
            if through == "other":  # its write reaches this coordinator's keys by the tail
                eventually(functools.partial(knows, cached, results))
                learned_s.append(time.monotonic() - acked_at)
            else:  # known before the ack
                assert knows(cached, results)
            wait_applied(replicas, results)
            for rep in range(3):  # repeated identical queries: the 2nd and 3rd are cached
                s.ask_all(f"step {n} ({through}) pass {rep}")
        hits = cached.metric("cbir_coordinator_cache_lookups_total", **HIT)
        for shard, row in enumerate(replicas):  # what the cache keys come from
            known = next(i for i in s.expected.live if shard_of(i, SHARDS) == shard)
            for replica in row:
                search_seq, vectors_seq, stats_seq = reported_positions(replica, s.queries[0],
                                                                        known)
                assert search_seq == vectors_seq == stats_seq > 0
    finally:
        for client in clients:
            client.close()
        for c in coordinators:
            c.close()
    print(f"\ncache under live writes: {s.tally.asked} answers checked, "
          f"{len(s.tally.stale)} stale, {hits:.0f} cache hits; another coordinator's write "
          f"known here after at most {max(learned_s):.2f} s (tail interval {TAIL_S} s)")
    assert s.tally.stale == [], s.tally.stale
    assert hits >= s.tally.asked / 2  # the cache did answer
    # One tail interval plus one LIST (the slow Stats poll, 5 s, cannot be what taught it).
    assert max(learned_s) <= TAIL_S + SLACK_S, learned_s


@dataclass
class RollCheck:
    """Repeated cached queries across a roll, each checked in the version it names."""

    client: CoordinatorClient
    queries: np.ndarray
    expected: dict[str, Expected]
    new_version: str
    asked: int = 0
    old: int = 0  # answers from the old version once the roll completed
    stale: list[str] = field(default_factory=list)

    def ask_round(self, label: str, rolled: bool) -> None:
        for i, q in enumerate(self.queries):
            got = self.client.search_vector(q, k=K)
            self.asked += 1
            self.old += rolled and got.index_version != self.new_version
            if not is_fresh(got.hits, self.expected[got.index_version], q):
                self.stale.append(f"{label} query {i} in {got.index_version}")

    def write(self, replicas: list[list[ShardProcess]], key: str, vector: np.ndarray,
              versions: Sequence[str]) -> None:
        for version in versions:
            self.expected[version].upsert(key, vector)
        wait_applied(replicas, self.client.upsert([UpsertSpec(key, vector=vector)]))


def test_no_cached_answer_from_the_old_version_after_a_pointer_flip(
        glove_v1: Version, glove_v2: Version, bucket: str, tmp_path: Path) -> None:
    pointer = str(tmp_path / "indexes" / "CURRENT")
    write_pointer(pointer, glove_v1.root)
    wal = f"s3://{bucket}/wal"
    replicas = start_replicas(lambda shard: ShardProcess(
        shard, ["--index-pointer", pointer, "--pointer-interval", "0.3",
                # Every version lives in its own pytest temp folder: allow their parent.
                "--allowed-index-root", str(Path(glove_v1.root).parents[1])], tmp_path,
        ["--wal", wal, "--wal-interval", "0.2"]))
    coordinator = Coordinator(replicas, wal=wal)
    queries = query_pool([glove_v1, glove_v2], 4)
    check = RollCheck(CoordinatorClient(f"127.0.0.1:{coordinator.port}", timeout_s=10), queries,
                      {v.version: Expected.of(v) for v in (glove_v1, glove_v2)},
                      glove_v2.version)
    try:
        for n in range(2):  # the log holds writes that v2 must replay when it loads
            check.write(replicas, f"s3://photos/roll/{n}.jpg", near(queries[n], 10 + n),
                        list(check.expected))
        for rep in range(3):
            check.ask_round(f"v1 pass {rep}", False)
        write_pointer(pointer, glove_v2.root)  # the roll: one atomic write
        deadline = time.monotonic() + 60
        while check.client.info().index_version != glove_v2.version:
            assert time.monotonic() < deadline, "the roll never completed"
            check.ask_round("rolling", False)
        for rep in range(4):
            check.ask_round(f"v2 pass {rep}", True)
        check.write(replicas, "s3://photos/roll/after.jpg", near(queries[2], 20),
                    [glove_v2.version])
        for rep in range(3):
            check.ask_round(f"v2 after a write, pass {rep}", True)
        hits = coordinator.metric("cbir_coordinator_cache_lookups_total", **HIT)
    finally:
        check.client.close()
        coordinator.close()
        for row in replicas:
            for r in row:
                r.stop()
    print(f"\ncache across a pointer flip: {check.asked} answers checked, {len(check.stale)} "
          f"stale, {check.old} from the old version after the roll, {hits:.0f} cache hits")
    assert check.stale == [] and check.old == 0, check.stale
    assert hits >= check.asked / 3
