"""Caches whose keys say what the answer depends on, so invalidation is a key change.

A cached search answer is keyed by the query (a digest of the vector bytes, of the image bytes,
or the image id), k, the search params, the filter text and the exact state it was computed
from: the index version it was pinned to and each shard's applied log position. An index roll
or an applied write changes that state, so the next lookup misses: nothing is ever served from
an older index or from before a write, and no timer is involved. Entries leave only by the LRU
byte budget (cachetools' ``LRUCache`` with ``getsizeof``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from cachetools import LRUCache

V = TypeVar("V")

# Trailing metadata of a shard's GetVectors answer: the log position of the live state the
# vectors came from (GetVectorsResponse has no field for it; ShardSearchResponse.applied_seq
# carries the same for searches).
APPLIED_SEQ_METADATA = "cbir-applied-seq"


def digest(kind: str, payload: bytes) -> str:
    """A collision-resistant name for a query payload (``kind`` keeps vectors, images and ids
    apart even when their bytes agree)."""
    return f"{kind}:{hashlib.blake2b(payload, digest_size=20).hexdigest()}"


class AnswerKey(NamedTuple):
    """Everything a search answer depends on. A NamedTuple, not a dataclass: it is hashed and
    compared on every lookup, and a tuple does both in C (a cache hit is a few microseconds)."""

    query: str  # digest(...) of the vector / image bytes, or "id:<n>"
    k: int
    params: tuple[tuple[str, int], ...]
    filter_text: str
    index_version: str
    log_positions: tuple[int, ...]  # applied log sequence number per shard, shard order


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    bytes: int
    max_bytes: int


class ByteBudgetCache(Generic[V]):
    """A thread-safe LRU cache bounded by the total size of its values (``size_of``)."""

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self._lru: LRUCache[Hashable, V] = LRUCache(maxsize=max(max_bytes, 1), getsizeof=size_of)
        self._size_of = size_of
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, key: Hashable) -> V | None:
        if not self.enabled:
            return None
        with self._lock:
            value = self._lru.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            return value

    def put(self, key: Hashable, value: V) -> None:
        """Store ``value``; one larger than the whole budget is simply not cached."""
        if not self.enabled or self._size_of(value) > self.max_bytes:
            return
        with self._lock:
            self._lru[key] = value

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.hits, self.misses, len(self._lru), int(self._lru.currsize),
                              self.max_bytes)
