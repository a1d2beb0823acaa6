"""The coordinator's caches (no grpc, no protobuf): whole answers, and query-image embeddings.

Result cache: a ``cbir.cache.AnswerKey`` names everything an answer depends on - the query (a
digest of the vector's or the image's bytes, or the image id), k, the search params, the
filter, the index version the query is pinned to and each shard's write-ahead log position.
A lookup uses the positions this coordinator knows (``coordinator.log_positions``: its own
acknowledged writes, what replicas report, the log's tail); an answer is stored under the
positions its answering replicas reported (for an image-id query, the older of that and the
position its query vector was read at). So an answer from a lagging replica is never served
for a newer state, an acknowledged write changes the key at once, and an index roll changes
the pinned version: nothing is served from an older index or from before a known write, and
nothing expires by time. Only complete answers computed in the key's version are stored.

Embedding cache: image bytes -> the model's vector, keyed by the content hash, so a hot image
costs one CNN forward pass however often it is asked for, whatever k / filter / version.

Both are ``cbir.cache.ByteBudgetCache`` LRUs (a byte budget; 0 = off), counted in Prometheus.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
from prometheus_client import Counter

from cbir.cache import AnswerKey, ByteBudgetCache, digest
from coordinator.config import CacheConfig
from coordinator.log_positions import LogPositions
from coordinator.queries import IndexParams
from coordinator.search import SearchAnswer

ENTRY_OVERHEAD = 256  # bytes per entry beyond its value: the key, the LRU's bookkeeping


def query_digest(image: bytes | None, vector: Sequence[float] | None, image_id: int | None,
                 exclude_query_image: bool) -> str | None:
    """What identifies the query itself (None: no query, nothing to cache)."""
    if image is not None:
        return digest("image", image)
    if vector is not None:
        return digest("vector", vector_bytes(vector))
    if image_id is not None:
        return f"id:{image_id}:{int(exclude_query_image)}"
    return None


def vector_bytes(vector: Sequence[float]) -> bytes:
    """The float32 LE bytes of a query vector. struct packs a protobuf repeated field about 3x
    faster than numpy converts it (this runs on every cache lookup); a value beyond float32's
    range (refused later by the query checks) takes numpy's path, which makes it inf."""
    try:
        return struct.pack(f"<{len(vector)}f", *vector)
    except (OverflowError, struct.error):
        with np.errstate(over="ignore"):
            return np.asarray(vector, "<f4").tobytes()


def answer_size(answer: SearchAnswer) -> int:
    """About what a cached answer holds in memory (hits dominate): each hit as a Python object
    and again in the reply message the servicer keeps with it (``SearchAnswer.memo``)."""
    return ENTRY_OVERHEAD + sum(128 + 2 * len(h.key) for h in answer.hits)


class QueryCaches:
    def __init__(self, config: CacheConfig, lookups: Counter | None = None,
                 positions: LogPositions | None = None) -> None:
        self.answers: ByteBudgetCache[SearchAnswer] = ByteBudgetCache(
            config.result_cache_bytes, answer_size)
        self.embeddings: ByteBudgetCache[np.ndarray] = ByteBudgetCache(
            config.embedding_cache_bytes, lambda v: int(v.nbytes) + ENTRY_OVERHEAD)
        # Prometheus counter (labels: cache, result), its children resolved once: .labels()
        # per lookup cost more than the lookup itself.
        self._counted = {(cache, hit): lookups.labels(cache, "hit" if hit else "miss")
                         for cache in ("result", "embedding") for hit in (True, False)} \
            if lookups is not None else {}
        # Without a log the positions stay 0 (replicas without --wal report 0).
        self.positions = positions

    def answer_key(self, query: str | None, k: int, params: IndexParams, filter_text: str,
                   version: str | None, num_shards: int) -> AnswerKey | None:
        """The lookup key: the state this coordinator knows now (None = do not cache: no
        pinned version yet, or no query)."""
        if not self.answers.enabled or version is None or query is None:
            return None
        return AnswerKey(query, k, (("ef_search", params.ef_search), ("nprobe", params.nprobe)),
                         filter_text, version, self.answer_positions(num_shards))

    def get_answer(self, key: AnswerKey | None) -> SearchAnswer | None:
        if key is None:
            return None
        answer = self.answers.get(key)
        self._count("result", answer is not None)
        return answer

    def put_answer(self, key: AnswerKey | None, answer: SearchAnswer,
                   source: tuple[int, int] | None = None) -> None:
        """Learn the positions ``answer``'s replicas reported, and store a complete answer
        computed in the key's version under them. ``source``: (shard, position) the query
        vector was read at (image-id queries). Answers are immutable."""
        if answer.log_positions and self.positions is not None:
            self.positions.learn_all(answer.log_positions)
        if key is None or answer.failed_shards or answer.index_version != key.index_version:
            return
        stored = list(answer.log_positions or key.log_positions)
        if source is not None:
            shard, seq = source
            stored[shard] = min(stored[shard], seq)
        # Positions only grow: an answer older than what is known now would never be hit.
        if tuple(stored) != self.answer_positions(len(stored)):
            return
        self.answers.put(key._replace(log_positions=tuple(stored)), answer)

    def answer_positions(self, num_shards: int) -> tuple[int, ...]:
        """The log positions known now, one per shard."""
        return self.positions.known if self.positions is not None else (0,) * num_shards

    def get_embedding(self, image: bytes) -> tuple[str, np.ndarray | None]:
        key = digest("image", image)
        if not self.embeddings.enabled:
            return key, None
        vector = self.embeddings.get(key)
        self._count("embedding", vector is not None)
        return key, vector

    def put_embedding(self, key: str, vector: np.ndarray) -> None:
        self.embeddings.put(key, np.array(vector, dtype=np.float32))  # a private copy

    def _count(self, cache: str, hit: bool) -> None:
        counter = self._counted.get((cache, hit))
        if counter is not None:
            counter.inc()
