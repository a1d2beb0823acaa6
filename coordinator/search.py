"""One query across every shard: fan out, keep one index version, merge top-K exactly.

Index-version rule: an answer never mixes index versions. Normally every query is pinned up
front to the newest version that every shard has a live replica for (``coordinator.versions``,
from the replicas' ``Stats.held_versions``) and sent first to replicas holding it; a replica
without it answers FAILED_PRECONDITION and another replica is tried. Before any replica has
reported, the version answered by the most shards wins and the other shards are asked again
pinned to it. A shard that cannot answer in the chosen version is a failed shard (partial).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field

import grpc
import numpy as np

from cbir.cache import APPLIED_SEQ_METADATA
from cbir.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from cbir.ids import shard_of
from cbir.merge import MergedHit, ShardHits, ShardRows, merge_rows, merge_top_k
from coordinator.batching import Row, ShardBatcher
from coordinator.fanout import RETRYABLE, Fanout, ShardCallFailed
from coordinator.queries import IndexParams
from protos import cbir_pb2, cbir_pb2_grpc

log = logging.getLogger(__name__)

PINNED_RETRYABLE = RETRYABLE | {grpc.StatusCode.FAILED_PRECONDITION}


@dataclass(frozen=True)
class ClusterInfo:
    """What the shards serve, from their Stats (the value most shards report)."""

    num_shards: int
    dim: int
    metric: str
    model: str
    model_versions: frozenset[str]
    index_version: str
    reporting_shards: tuple[int, ...]
    # Per shard, from its last Stats (for Info).
    counts: Mapping[int, int] = field(default_factory=dict)
    versions: Mapping[int, str] = field(default_factory=dict)
    # What a filter may name: (name, Arrow type) from a shard's Stats (docs/filters.md).
    metadata_columns: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SearchAnswer:
    hits: list[MergedHit]
    failed_shards: tuple[int, ...]
    index_version: str
    metric: str
    # Per shard (shard order), the log position its answer was computed at (0: none / no
    # answer); what the result cache stores the answer under.
    log_positions: tuple[int, ...] = ()
    # Where a front end may keep its encoding of this immutable answer, so a cached answer is
    # encoded once, not on every hit (the gRPC servicer keeps its reply message here).
    memo: dict[str, object] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class StoredVector:
    """An indexed image's stored vector and the log position of the state it came from."""

    vector: np.ndarray
    shard: int
    applied_seq: int


def applied_seq_of(metadata: grpc.aio.Metadata | None) -> int:
    """The shard's log position from GetVectors' trailing metadata (0 when absent)."""
    value = metadata.get(APPLIED_SEQ_METADATA) if metadata is not None else None
    try:
        return int(value) if isinstance(value, str) else 0
    except ValueError:
        return 0


def majority(values: list[str]) -> str:
    """The most common value; ties go to the greatest (the newest of time-ordered versions)."""
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], v))


def cluster_info(num_shards: int, stats: Mapping[int, cbir_pb2.StatsResponse]) -> ClusterInfo:
    for shard, s in stats.items():
        if s.shard != shard or s.num_shards != num_shards:
            log.error("topology says shard %d of %d but the replica serves shard %d of %d",
                      shard, num_shards, s.shard, s.num_shards)
    values = list(stats.values())
    return ClusterInfo(
        num_shards=num_shards,
        dim=int(majority([str(s.dim) for s in values])),
        metric=majority([s.metric for s in values]),
        model=majority([s.model for s in values]),
        model_versions=frozenset(s.model_version for s in values),
        index_version=majority([s.index_version for s in values]),
        reporting_shards=tuple(sorted(stats)),
        counts={shard: s.count for shard, s in stats.items()},
        versions={shard: s.index_version for shard, s in stats.items()},
        metadata_columns=tuple((c.name, c.type) for c in values[0].metadata_columns)
        if values else (),
    )


class DistributedSearch:
    def __init__(self, fanout: Fanout, num_shards: int) -> None:
        self.fanout = fanout
        self.num_shards = num_shards
        self.batchers = (
            [ShardBatcher(fanout, s, PINNED_RETRYABLE) for s in range(num_shards)]
            if fanout.config.batch_in_flight_per_replica > 0 else None
        )

    async def stats(self, deadline: float) -> dict[int, cbir_pb2.StatsResponse]:
        async def one(shard: int) -> cbir_pb2.StatsResponse | None:
            try:
                return await self.fanout.call(
                    shard, lambda stub, t: stub.Stats(cbir_pb2.StatsRequest(), timeout=t),
                    deadline,
                )
            except ShardCallFailed as exc:
                log.info("no stats from %s", exc)
                return None

        answers = await asyncio.gather(*(one(s) for s in range(self.num_shards)))
        return {s: a for s, a in enumerate(answers) if a is not None}

    async def vector_of(self, image_id: int, deadline: float, request_id: str) -> np.ndarray:
        return (await self.stored_vector(image_id, deadline, request_id)).vector

    async def fetch_vectors(self, shard: int, image_ids: list[int], deadline: float,
                            request_id: str) -> tuple[cbir_pb2.GetVectorsResponse, int]:
        """One GetVectors call to a replica of ``shard``: its reply and the log position it
        answered at (trailing metadata). Raises ``ShardCallFailed``."""
        request = cbir_pb2.GetVectorsRequest(image_ids=image_ids, request_id=request_id)

        async def call(stub: cbir_pb2_grpc.ShardStub, timeout: float
                       ) -> tuple[cbir_pb2.GetVectorsResponse, int]:
            rpc = stub.GetVectors(request, timeout=timeout)
            reply = await rpc
            return reply, applied_seq_of(await rpc.trailing_metadata())

        return await self.fanout.call(shard, call, deadline)

    async def stored_vector(self, image_id: int, deadline: float, request_id: str
                            ) -> StoredVector:
        shard = shard_of(image_id, self.num_shards)  # the data contract, not a copy of it
        try:
            reply, applied_seq = await self.fetch_vectors(shard, [image_id], deadline, request_id)
        except ShardCallFailed as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"unknown image id {image_id}") from exc
            if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded(
                    f"deadline exceeded fetching image id {image_id} from shard {shard}"
                ) from exc
            raise Unavailable(
                f"shard {shard}, which holds image id {image_id}, is unavailable: {exc.reason}"
            ) from exc
        if image_id not in reply.image_ids or reply.dim <= 0:
            raise NotFound(f"unknown image id {image_id}")
        vectors = np.frombuffer(reply.vectors, dtype="<f4").reshape(-1, reply.dim)
        vector = np.array(vectors[list(reply.image_ids).index(image_id)], dtype=np.float32)
        return StoredVector(vector, shard, applied_seq)

    async def search(
        self,
        query: np.ndarray,
        k: int,
        index_params: IndexParams,
        exclude_id: int | None,
        deadline: float,
        request_id: str,
        filter_text: str = "",
    ) -> SearchAnswer:
        # One extra to make room for the excluded query image, within what a shard accepts:
        # at k = max_k an excluded self-match leaves max_k - 1 hits rather than failing.
        shard_k = min(k + (1 if exclude_id is not None else 0), self.fanout.config.limits.max_k)
        params = cbir_pb2.SearchParams(nprobe=index_params.nprobe,
                                       ef_search=index_params.ef_search)
        pinned = self.fanout.pinned_version()
        # Filtered queries are not micro-batched: each carries its own filter to every shard.
        if pinned is not None and self.batchers is not None and not filter_text:
            answers = await self._batched(query, shard_k, params, pinned, deadline, request_id)
            return self._answer(answers, k, exclude_id, pinned, deadline, request_id)
        request = cbir_pb2.ShardSearchRequest(
            vectors=np.ascontiguousarray(query, dtype="<f4").tobytes(), dim=int(query.shape[0]),
            k=shard_k, params=params, request_id=request_id, filter=filter_text,
        )
        if pinned is not None:
            rows = await self._pinned(request, pinned, deadline)
            version = pinned
        else:
            rows, version = await self._by_majority(request, deadline)
        return self._answer(rows, k, exclude_id, version, deadline, request_id)

    async def search_many(
        self, queries: np.ndarray, k: int, index_params: IndexParams,
        exclude_ids: list[int | None], deadline: float, request_id: str, filter_text: str = "",
    ) -> list[SearchAnswer]:
        """Many queries (n x dim), ONE shard call per shard carrying all of them (not through
        the micro-batcher: the request is already a batch); one answer per row, each exactly
        what ``search`` answers for that row alone. No shard answering fails them all."""
        extra = 1 if any(e is not None for e in exclude_ids) else 0
        shard_k = min(k + extra, self.fanout.config.limits.max_k)
        vectors = np.ascontiguousarray(queries, dtype="<f4")
        request = cbir_pb2.ShardSearchRequest(
            vectors=vectors.tobytes(), dim=int(vectors.shape[1]), k=shard_k,
            params=cbir_pb2.SearchParams(nprobe=index_params.nprobe,
                                         ef_search=index_params.ef_search),
            request_id=request_id, filter=filter_text,
        )
        pinned = self.fanout.pinned_version()
        if pinned is not None:
            answers, version = await self._pinned(request, pinned, deadline), pinned
        else:
            answers, version = await self._by_majority(request, deadline)
        if not answers:
            self._answer({}, k, None, version, deadline, request_id)  # raises why
        metric = majority([a.metric for a, _ in answers.values()])
        rows = {s: parsed for s, (reply, _) in answers.items()
                if (parsed := parse_rows(s, reply, len(vectors), metric)) is not None}
        failed = tuple(s for s in range(self.num_shards) if s not in rows)
        merged = merge_rows(list(rows.values()), k, metric, exclude_ids)
        positions = tuple(answers[s][0].applied_seq if s in rows else 0
                          for s in range(self.num_shards))
        return [SearchAnswer(hits, failed, version, metric, positions) for hits in merged]

    def _answer(self, answers: dict[int, Row], k: int, exclude_id: int | None, version: str,
                deadline: float, request_id: str) -> SearchAnswer:
        if not answers and self.fanout.attempt_budget_s(deadline) <= 0:
            raise DeadlineExceeded(
                f"deadline exceeded before any shard answered (request {request_id})")
        if not answers:
            raise Unavailable(f"no shard answered ({self.num_shards} shards, request {request_id})")
        hits, metric = self._merge(answers, k, exclude_id)
        failed = tuple(s for s in range(self.num_shards) if s not in hits)
        merged = merge_top_k(list(hits.values()), k, metric, exclude_id)
        positions = tuple(answers[s][0].applied_seq if s in hits else 0
                          for s in range(self.num_shards))
        return SearchAnswer(merged, failed, version, metric, positions)

    async def _batched(
        self, query: np.ndarray, k: int, params: cbir_pb2.SearchParams, version: str,
        deadline: float, request_id: str,
    ) -> dict[int, Row]:
        """The pinned path through the shards' batching queues (see coordinator.batching)."""
        assert self.batchers is not None
        vector = np.ascontiguousarray(query, dtype="<f4")
        futures = [b.submit(vector, k, params, version, deadline, request_id)
                   for b in self.batchers]
        rows: list[Row | None] = []
        try:
            for shard, future in enumerate(futures):  # every shard's call is already under way
                try:
                    rows.append(await future)
                except ShardCallFailed as exc:
                    log.warning("left out of request %s: %s", request_id, exc)
                    self.fanout.metrics.shard_failures.labels(str(shard)).inc()
                    rows.append(None)
        finally:
            for future in futures:  # cancelled caller: withdraw the rest of the query
                if future.done() and not future.cancelled():
                    future.exception()  # mark retrieved: no "never retrieved" noise
                future.cancel()
        return in_version({s: r for s, r in enumerate(rows) if r is not None}, version)

    async def close(self) -> None:
        for batcher in self.batchers or ():
            await batcher.close()

    async def _pinned(
        self, request: cbir_pb2.ShardSearchRequest, version: str, deadline: float
    ) -> dict[int, Row]:
        """Every shard asked for ``version``, first on the replicas known to hold it."""
        request.index_version = version
        answers = await self._fan_out(request, range(self.num_shards), deadline,
                                      PINNED_RETRYABLE, version)
        return in_version(answers, version)

    async def _by_majority(
        self, request: cbir_pb2.ShardSearchRequest, deadline: float
    ) -> tuple[dict[int, Row], str]:
        """Before any replica has reported its versions: ask unpinned, keep the majority
        version and ask the other shards again pinned to it."""
        answers = await self._fan_out(request, range(self.num_shards), deadline, RETRYABLE)
        if not answers:
            return answers, ""
        version = majority([a.index_version for a, _ in answers.values()])
        stragglers = [s for s, (a, _) in answers.items() if a.index_version != version]
        if stragglers:
            log.info("shards %s answered another index version than %s; asking again",
                     stragglers, version)
            for shard in stragglers:
                del answers[shard]
            pinned = cbir_pb2.ShardSearchRequest()
            pinned.CopyFrom(request)
            pinned.index_version = version
            again = await self._fan_out(pinned, stragglers, deadline, PINNED_RETRYABLE, version)
            answers.update(in_version(again, version))
        return answers, version

    async def _fan_out(
        self,
        request: cbir_pb2.ShardSearchRequest,
        shards: range | list[int],
        deadline: float,
        retry_codes: frozenset[grpc.StatusCode],
        version: str | None = None,
    ) -> dict[int, Row]:
        """Each shard's answer as a Row (row 0: one query per request)."""

        async def one(shard: int) -> Row | None:
            def call(
                stub: cbir_pb2_grpc.ShardStub, timeout: float
            ) -> Awaitable[cbir_pb2.ShardSearchResponse]:
                return stub.Search(request, timeout=timeout)

            prefer = self.fanout.holders(shard, version) if version else None
            try:
                return await self.fanout.call(shard, call, deadline, retry_codes, prefer), 0
            except ShardCallFailed as exc:
                if exc.code == grpc.StatusCode.INVALID_ARGUMENT:  # e.g. the filter: the caller's
                    raise InvalidArgument(exc.reason.split("INVALID_ARGUMENT: ", 1)[-1]) from exc
                log.warning("left out of request %s: %s", request.request_id, exc)
                self.fanout.metrics.shard_failures.labels(str(shard)).inc()
                return None

        shard_list = list(shards)
        replies = await asyncio.gather(*(one(s) for s in shard_list))
        return {s: r for s, r in zip(shard_list, replies, strict=True) if r is not None}

    def _merge(
        self, answers: dict[int, Row], k: int, exclude_id: int | None
    ) -> tuple[dict[int, ShardHits], str]:
        metric = majority([a.metric for a, _ in answers.values()]) if answers else "ip"
        hits: dict[int, ShardHits] = {}
        for shard, (reply, row) in answers.items():
            if reply.metric != metric:
                log.error("shard %d answered with metric %r, the others %r; left out",
                          shard, reply.metric, metric)
                continue
            parsed = parse_hits(shard, reply, row)
            if parsed is not None:
                hits[shard] = parsed
        return hits, metric


def in_version(answers: dict[int, Row], version: str) -> dict[int, Row]:
    """The answers in ``version``: one from a replica that ignored the pin is logged and left
    out, so an answer never mixes index versions."""
    kept: dict[int, Row] = {}
    for shard, row in answers.items():
        if row[0].index_version == version:
            kept[shard] = row
        else:
            log.error("shard %d answered version %s to a query pinned to %s; left out",
                      shard, row[0].index_version, version)
    return kept


def parse_hits(shard: int, reply: cbir_pb2.ShardSearchResponse, row: int = 0
               ) -> ShardHits | None:
    """Query ``row``'s hits in a shard's packed answer; None (logged) when malformed."""
    ids = np.frombuffer(reply.ids, dtype="<i8")
    scores = np.frombuffer(reply.scores, dtype="<f4")
    k = reply.k
    lo, hi = row * k, (row + 1) * k
    if reply.num_queries <= row or k < 0 or len(ids) < hi or len(scores) < hi:
        log.error("shard %d sent a malformed answer (k=%d, %d ids, %d scores, row %d)",
                  shard, k, len(ids), len(scores), row)
        return None
    keys = list(reply.keys[lo:hi])
    return ShardHits(shard, ids[lo:hi].copy(), scores[lo:hi].copy(), keys)


def parse_rows(shard: int, reply: cbir_pb2.ShardSearchResponse, n: int, metric: str
               ) -> ShardRows | None:
    """A shard's packed answer to n queries; None (logged) when malformed or in another
    metric than the other shards'."""
    ids = np.frombuffer(reply.ids, dtype="<i8")
    scores = np.frombuffer(reply.scores, dtype="<f4")
    k = reply.k
    if reply.num_queries != n or k < 0 or len(ids) != n * k or len(scores) != n * k:
        log.error("shard %d sent a malformed answer (%d rows for %d queries, k=%d, %d ids, "
                  "%d scores)", shard, reply.num_queries, n, k, len(ids), len(scores))
        return None
    if reply.metric != metric:
        log.error("shard %d answered with metric %r, the others %r; left out",
                  shard, reply.metric, metric)
        return None
    return ShardRows(shard, ids.reshape(n, k), scores.reshape(n, k), reply.keys)
