"""A write + query load for the compaction-under-load test: one writer thread (new images,
replacements of existing ones, deletes of live ones, each retried until acknowledged, so the
expected state is exact) and query threads through the coordinator counting failures."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from cbir.client import CoordinatorClient, UpsertSpec, WriteResult
from cbir.ids import image_id, shard_of

SHARDS = 2


@dataclass(frozen=True)
class Acked:
    """One acknowledged write, where the log put it."""

    key: str
    vector: np.ndarray | None  # None: a delete
    shard: int
    seq: int
    at: float  # monotonic time of the acknowledgement


@dataclass
class State:
    """image id -> (key, vector): the live set."""

    live: dict[int, tuple[str, np.ndarray]]

    def apply(self, write: Acked) -> None:
        if write.vector is None:
            self.live.pop(image_id(write.key), None)
        else:
            self.live[image_id(write.key)] = (write.key, write.vector)

    def shard(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array(sorted(i for i in self.live if shard_of(i, SHARDS) == shard), np.int64)
        return ids, np.stack([self.live[int(i)][1] for i in ids]).astype(np.float32)

    def top_k(self, shard: int, query: np.ndarray, k: int) -> tuple[list[int], float]:
        """Brute force: the exact top-k and the score gap at place k."""
        ids, vectors = self.shard(shard)
        scores = vectors @ query
        order = np.lexsort((ids, -scores.astype(np.float64)))
        ranked = scores[order]
        return [int(ids[i]) for i in order[:k]], float(ranked[k - 1] - ranked[k])


@dataclass
class Counts:
    upserts: int = 0
    replaces: int = 0
    deletes: int = 0
    write_retries: int = 0
    queries: int = 0
    failed_queries: int = 0
    partial: int = 0
    errors: list[str] = field(default_factory=list)


class WriteAndQueryLoad:
    def __init__(self, port: int, base: State, fresh: np.ndarray, seed: int = 3) -> None:
        self.address = f"127.0.0.1:{port}"
        self.base_keys = sorted(key for key, _ in base.live.values())
        self.state = State(dict(base.live))
        self.fresh = fresh  # vectors for new and replaced images, used in order
        self.acked: list[Acked] = []
        self.deleted: set[int] = set()
        self.counts = Counts()
        self.stop = threading.Event()
        self.rng = random.Random(seed)
        self._lock = threading.Lock()  # the writer changes ``state`` while queriers read it
        self._threads = [threading.Thread(target=self._writer, daemon=True)] + [
            threading.Thread(target=self._querier, daemon=True) for _ in range(2)]

    def __enter__(self) -> WriteAndQueryLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(60)

    def wait_writes(self, n: int, timeout_s: float = 60.0) -> None:
        end = time.monotonic() + timeout_s
        while len(self.acked) < n:
            assert time.monotonic() < end, f"only {len(self.acked)} writes acknowledged"
            time.sleep(0.05)

    def _next(self, i: int) -> tuple[str, np.ndarray | None]:
        kind = i % 4
        if kind in (0, 1):
            self.counts.upserts += 1
            return f"s3://photos/live/{i}.jpg", self.fresh[i]
        if kind == 2:
            self.counts.replaces += 1
            return self.rng.choice(self.base_keys), self.fresh[i]
        self.counts.deletes += 1
        victim = self.rng.choice(sorted(self.state.live))
        return self.state.live[victim][0], None

    def _write(self, client: CoordinatorClient, key: str, vector: np.ndarray | None
               ) -> WriteResult:
        for _ in range(50):
            try:
                result = (client.upsert([UpsertSpec(key, vector=vector)])[0]
                          if vector is not None else client.delete(keys=[key])[0])
                if result.ok:
                    return result
            except Exception as exc:  # an answer lost: retrying is safe (idempotent)
                self.counts.errors.append(f"write: {exc}")
            self.counts.write_retries += 1
            time.sleep(0.1)
        raise AssertionError(f"write of {key} never acknowledged")

    def _writer(self) -> None:
        with CoordinatorClient(self.address, timeout_s=10) as client:
            i = 0
            while not self.stop.is_set() and i < len(self.fresh):
                key, vector = self._next(i)
                result = self._write(client, key, vector)
                write = Acked(key, vector, result.shard, result.seq, time.monotonic())
                self.acked.append(write)
                with self._lock:
                    self.state.apply(write)
                if vector is None:
                    self.deleted.add(image_id(key))
                else:
                    self.deleted.discard(image_id(key))
                i += 1

    def _querier(self) -> None:
        with CoordinatorClient(self.address, timeout_s=10) as client:
            while not self.stop.is_set():
                with self._lock:
                    ids = list(self.state.live)
                    _, vector = self.state.live[ids[self.rng.randrange(len(ids))]]
                try:
                    result = client.search_vector(vector, k=10)
                    self.counts.queries += 1
                    self.counts.partial += int(result.partial)
                except Exception as exc:
                    self.counts.queries += 1
                    self.counts.failed_queries += 1
                    self.counts.errors.append(f"query: {exc}")
                time.sleep(0.01)
