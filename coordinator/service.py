"""The query service: one search request in plain types -> one answer (no grpc, no protobuf).

The gRPC servicer only translates a ``SearchRequest`` into a ``Query`` and the ``SearchAnswer``
back; a future HTTP handler calls the same ``QueryService.search``. Here live the rules every
front end shares: the caller's deadline, which query kind turns into which vector (embed an
image, fetch an indexed image's stored vector, or check a raw vector), normalising it for the
metric, the search itself and leaving out the query image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cbir.cache import AnswerKey
from cbir.errors import (
    CbirError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelMismatch,
    Unavailable,
)
from cbir.limits import Limits
from cbir.rpc.deadlines import caller_budget_s
from coordinator.batch_queries import BatchAnswer, BatchQuery, check_batch, resolve_vectors
from coordinator.caching import QueryCaches, query_digest
from coordinator.config import CacheConfig
from coordinator.queries import (
    IndexParams,
    check_image_id,
    check_params,
    check_vector,
    prepare_query,
    resolve_k,
)
from coordinator.query_embedder import EmbeddingRunner, check_image_bytes
from coordinator.search import ClusterInfo, DistributedSearch, SearchAnswer, StoredVector


@dataclass(frozen=True)
class Query:
    """One search request. Exactly one of ``image``, ``vector``, ``image_id`` is set.

    ``vector`` may be any sized sequence (e.g. a protobuf repeated field): its length is
    checked before it is converted. ``time_remaining_s``: what the caller's deadline leaves
    (None: no deadline, the default applies)."""

    image: bytes | None = None
    vector: Sequence[float] | None = None
    image_id: int | None = None
    k: int = 0
    params: IndexParams = field(default_factory=IndexParams)
    exclude_query_image: bool = False
    request_id: str = ""
    time_remaining_s: float | None = None
    filter: str = ""  # metadata filter pushed down to every shard (docs/filters.md)

    @property
    def kind(self) -> str:
        """"image", "vector", "image_id" or "none" (for metrics and logs)."""
        for name in ("image", "vector", "image_id"):
            if getattr(self, name) is not None:
                return name
        return "none"


@dataclass
class CoordinatorState:
    """What the background tasks learn and the service reads."""

    image_queries: bool
    info: ClusterInfo | None = None
    embedder: EmbeddingRunner | None = None
    embedder_error: str | None = None

    def require_info(self) -> ClusterInfo:
        if self.info is None:
            raise Unavailable("coordinator not ready: no shard has reported its stats yet")
        return self.info

    def require_embedder(self, info: ClusterInfo) -> EmbeddingRunner:
        if not self.image_queries:
            raise FailedPrecondition(
                "image queries are disabled on this coordinator; query by vector or image id"
            )
        if self.embedder_error is not None:
            raise FailedPrecondition(f"the query embedder failed to load: {self.embedder_error}")
        if self.embedder is None:
            raise Unavailable("coordinator not ready: the query embedder is still loading")
        e = self.embedder.embedder
        if e.dim != info.dim or info.model_versions != {e.version}:
            raise ModelMismatch(
                f"shards serve model version(s) {sorted(info.model_versions)} with dim "
                f"{info.dim}, but this coordinator embeds with {e.name} version {e.version} "
                f"(dim {e.dim}); start it with the model the index was built with"
            )
        return self.embedder


class QueryService:
    def __init__(self, limits: Limits, state: CoordinatorState, search: DistributedSearch,
                 deadline_margin_s: float, caches: QueryCaches | None = None) -> None:
        self.limits = limits
        self.state = state
        self.search_engine = search
        self.deadline_margin_s = deadline_margin_s
        # Off unless given; the server passes the ones its config sizes.
        self.caches = caches or QueryCaches(CacheConfig(0, 0))

    def deadline_of(self, query: Query) -> float:
        """The absolute deadline; one too short to reach any shard is refused at once, as
        DEADLINE_EXCEEDED (it is the caller's deadline, not a shard, that is the problem)."""
        budget = caller_budget_s(query.time_remaining_s, self.limits)
        if budget <= self.deadline_margin_s:
            raise DeadlineExceeded(
                f"the caller's deadline ({budget * 1000:.1f} ms left) is too short to ask any "
                f"shard (at least {self.deadline_margin_s * 1000:.0f} ms is kept back)"
            )
        return time.monotonic() + budget

    async def search(self, query: Query) -> SearchAnswer:
        deadline = self.deadline_of(query)
        k = resolve_k(query.k, self.limits)
        check_params(query.params.nprobe, query.params.ef_search, self.limits)
        info = self.state.require_info()
        key = self._answer_key(query, k, info)
        if (cached := self.caches.get_answer(key)) is not None:
            return cached
        vector, exclude, source = await self._query_vector(query, info, deadline)
        answer = await self.search_engine.search(
            prepare_query(vector, info.metric), k, query.params, exclude, deadline,
            query.request_id, filter_text=query.filter.strip(),
        )
        self.caches.put_answer(key, answer, source)
        return answer

    def _answer_key(self, query: Query, k: int, info: ClusterInfo) -> AnswerKey | None:
        """The result cache's key: the version queries are pinned to now (None = no caching)."""
        if not self.caches.answers.enabled:
            return None
        return self.caches.answer_key(
            query_digest(query.image, query.vector, query.image_id, query.exclude_query_image),
            k, query.params, query.filter.strip(), self.search_engine.fanout.pinned_version(),
            info.num_shards)

    async def _query_vector(self, query: Query, info: ClusterInfo, deadline: float
                            ) -> tuple[np.ndarray, int | None, tuple[int, int] | None]:
        """The query vector, the id to leave out, and for an indexed image the (shard, log
        position) its stored vector was read at (what a cached answer depends on too)."""
        if query.vector is not None:
            return check_vector(query.vector, info.dim), None, None
        if query.image is not None:
            check_image_bytes(query.image, self.limits)
            runner = self.state.require_embedder(info)
            digest, vector = self.caches.get_embedding(query.image)
            if vector is None:
                vector = await runner.embed(query.image)
                self.caches.put_embedding(digest, vector)
            return vector, None, None
        if query.image_id is not None:
            check_image_id(query.image_id)
            stored = await self.search_engine.stored_vector(query.image_id, deadline,
                                                            query.request_id)
            return (stored.vector, query.image_id if query.exclude_query_image else None,
                    (stored.shard, stored.applied_seq))
        raise InvalidArgument("the request needs one of: image, vector, image_id")

    async def search_batch(self, batch: BatchQuery) -> BatchAnswer:
        """Each query answered exactly as ``search`` would answer it alone (same cache keys),
        with one shard call per shard for the whole batch; a bad query gets its own error.
        What concerns the whole request (bounds, k, params, deadline, readiness) fails it."""
        check_batch(batch, self.limits)
        deadline = self.deadline_of(Query(time_remaining_s=batch.time_remaining_s))
        k = resolve_k(batch.k, self.limits)
        check_params(batch.params.nprobe, batch.params.ef_search, self.limits)
        info = self.state.require_info()
        keys = [self._answer_key(Query(image=item.image, vector=item.vector,
                                       image_id=item.image_id, k=batch.k, params=batch.params,
                                       exclude_query_image=batch.exclude_query_image,
                                       filter=batch.filter), k, info)
                for item in batch.items]
        results: list[SearchAnswer | CbirError | None] = [self.caches.get_answer(key)
                                                          for key in keys]
        todo = [i for i, r in enumerate(results) if r is None]
        vectors = await resolve_vectors(
            [batch.items[i] for i in todo], info, self._runner_or_error(batch, info),
            self.search_engine, self.caches, self.limits, deadline, batch.request_id)
        ready: list[tuple[int, np.ndarray]] = []
        sources: dict[int, tuple[int, int]] = {}  # image-id queries: where the vector was read
        for i, vector in zip(todo, vectors, strict=True):
            if isinstance(vector, StoredVector):
                sources[i] = (vector.shard, vector.applied_seq)
            try:
                ready.append((i, _as_query(vector, info.metric)))
            except CbirError as exc:
                results[i] = exc
        if ready:
            answers = await self.search_engine.search_many(
                np.stack([v for _, v in ready]), k, batch.params,
                [batch.items[i].image_id if batch.exclude_query_image else None
                 for i, _ in ready], deadline, batch.request_id, batch.filter.strip())
            for (i, _), answer in zip(ready, answers, strict=True):
                results[i] = answer
                self.caches.put_answer(keys[i], answer, sources.get(i))
        # Every query has its answer or error by now; the fallback only keeps the order.
        done = [r if r is not None else Unavailable("not answered") for r in results]
        first = next((r for r in done if isinstance(r, SearchAnswer)), None)
        return BatchAnswer(done, first.index_version if first else "",
                           first.metric if first else info.metric)

    def _runner_or_error(self, batch: BatchQuery, info: ClusterInfo
                         ) -> EmbeddingRunner | CbirError:
        """The embedder for the batch's image queries, or why they cannot be embedded (that
        fails the image queries only)."""
        if not any(item.image is not None for item in batch.items):
            return Unavailable("no image queries")
        try:
            return self.state.require_embedder(info)
        except CbirError as exc:
            return exc


def _as_query(vector: np.ndarray | StoredVector | CbirError, metric: str) -> np.ndarray:
    if isinstance(vector, CbirError):
        raise vector
    return prepare_query(vector.vector if isinstance(vector, StoredVector) else vector, metric)
