"""The coordinator's caches (no grpc calls): whole answers, and query-image embeddings.

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

from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter

from cbir.cache import AnswerKey, ByteBudgetCache, digest
from cbir.options import option
from protos import cbir_pb2

ENTRY_OVERHEAD = 256  # bytes per entry beyond its value: the key, the LRU's bookkeeping


@dataclass(frozen=True)
class CacheConfig:
    result_cache_bytes: int = option(
        64 * 1024 * 1024, non_negative=True, metavar="BYTES",
        help="memory for cached search answers (0 = off); keyed by the index version, so a "
             "roll never serves an old answer")
    embedding_cache_bytes: int = option(
        32 * 1024 * 1024, non_negative=True, metavar="BYTES",
        help="memory for embeddings of query images, by content hash (0 = off)")


def query_digest(request: cbir_pb2.SearchRequest) -> str | None:
    """What identifies the query itself (None: no query, nothing to cache)."""
    kind = request.WhichOneof("query")
    if kind == "image":
        return digest("image", request.image)
    if kind == "vector":
        return digest("vector", np.asarray(request.vector.values, "<f4").tobytes())
    if kind == "image_id":
        return f"id:{request.image_id}:{int(request.exclude_query_image)}"
    return None


class QueryCaches:
    def __init__(self, config: CacheConfig, lookups: Counter) -> None:
        self.answers: ByteBudgetCache[bytes] = ByteBudgetCache(
            config.result_cache_bytes, lambda data: len(data) + ENTRY_OVERHEAD)
        self.embeddings: ByteBudgetCache[np.ndarray] = ByteBudgetCache(
            config.embedding_cache_bytes, lambda v: int(v.nbytes) + ENTRY_OVERHEAD)
        self._lookups = lookups  # labels: cache, result

    def answer_key(self, request: cbir_pb2.SearchRequest, k: int, version: str | None,
                   num_shards: int, log_positions: tuple[int, ...] | None = None
                   ) -> AnswerKey | None:
        """The key, or None when the answer's state is unknown (no pinned version yet)."""
        query = query_digest(request)
        if not self.answers.enabled or version is None or query is None:
            return None
        params = (("ef_search", request.params.ef_search), ("nprobe", request.params.nprobe))
        return AnswerKey(query, k, params, request.filter.strip(), version,
                         log_positions or (0,) * num_shards)

    def get_answer(self, key: AnswerKey | None) -> cbir_pb2.SearchResponse | None:
        if key is None:
            return None
        data = self.answers.get(key)
        self._count("result", data is not None)
        return cbir_pb2.SearchResponse.FromString(data) if data is not None else None

    def put_answer(self, key: AnswerKey | None, reply: cbir_pb2.SearchResponse) -> None:
        """Store a complete answer computed in the key's version (request id left out)."""
        if key is None or reply.partial or reply.index_version != key.index_version:
            return
        stored = cbir_pb2.SearchResponse()
        stored.CopyFrom(reply)
        stored.request_id = ""
        self.answers.put(key, stored.SerializeToString())

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
        self._lookups.labels(cache, "hit" if hit else "miss").inc()
