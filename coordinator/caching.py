"""The coordinator's caches (no grpc, no protobuf): whole answers, and query-image embeddings.

Result cache: a ``cbir.cache.AnswerKey`` names everything an answer depends on - the query (a
digest of the vector's or the image's bytes, or the image id), k, the search params, the
filter, the index version the query is pinned to and each shard's applied log position (0 for
every shard until live updates land; the field is in the key so they only have to fill it in).
An index roll changes the pinned version, hence the key: nothing is served from an older index
and nothing expires by time. Only complete answers computed in the key's version are stored.

Embedding cache: image bytes -> the model's vector, keyed by the content hash, so a hot image
costs one CNN forward pass however often it is asked for, whatever k / filter / version.

Both are ``cbir.cache.ByteBudgetCache`` LRUs (a byte budget; 0 = off), counted in Prometheus.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client import Counter

from cbir.cache import AnswerKey, ByteBudgetCache, digest
from coordinator.config import CacheConfig
from coordinator.queries import IndexParams
from coordinator.search import SearchAnswer

ENTRY_OVERHEAD = 256  # bytes per entry beyond its value: the key, the LRU's bookkeeping


def query_digest(image: bytes | None, vector: Sequence[float] | None, image_id: int | None,
                 exclude_query_image: bool) -> str | None:
    """What identifies the query itself (None: no query, nothing to cache)."""
    if image is not None:
        return digest("image", image)
    if vector is not None:
        return digest("vector", np.asarray(vector, "<f4").tobytes())
    if image_id is not None:
        return f"id:{image_id}:{int(exclude_query_image)}"
    return None


def answer_size(answer: SearchAnswer) -> int:
    """About what a cached answer holds in memory (hits dominate)."""
    return ENTRY_OVERHEAD + sum(96 + len(h.key) for h in answer.hits)


class QueryCaches:
    def __init__(self, config: CacheConfig, lookups: Counter | None = None) -> None:
        self.answers: ByteBudgetCache[SearchAnswer] = ByteBudgetCache(
            config.result_cache_bytes, answer_size)
        self.embeddings: ByteBudgetCache[np.ndarray] = ByteBudgetCache(
            config.embedding_cache_bytes, lambda v: int(v.nbytes) + ENTRY_OVERHEAD)
        self._lookups = lookups  # Prometheus counter, labels: cache, result

    def answer_key(self, query: str | None, k: int, params: IndexParams, filter_text: str,
                   version: str | None, num_shards: int,
                   log_positions: tuple[int, ...] | None = None) -> AnswerKey | None:
        """The key, or None when the answer's state is unknown (no pinned version yet)."""
        if not self.answers.enabled or version is None or query is None:
            return None
        pairs = (("ef_search", params.ef_search), ("nprobe", params.nprobe))
        return AnswerKey(query, k, pairs, filter_text, version,
                         log_positions or (0,) * num_shards)

    def get_answer(self, key: AnswerKey | None) -> SearchAnswer | None:
        if key is None:
            return None
        answer = self.answers.get(key)
        self._count("result", answer is not None)
        return answer

    def put_answer(self, key: AnswerKey | None, answer: SearchAnswer) -> None:
        """Store a complete answer computed in the key's version (answers are immutable)."""
        if key is None or answer.failed_shards or answer.index_version != key.index_version:
            return
        self.answers.put(key, answer)

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
        if self._lookups is not None:
            self._lookups.labels(cache, "hit" if hit else "miss").inc()
