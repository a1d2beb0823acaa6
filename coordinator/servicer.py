"""cbir.v1.Coordinator: translates requests to the core (queries, search) and back."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import grpc
import numpy as np

from cbir.errors import FailedPrecondition, InvalidArgument, ModelMismatch, Unavailable
from cbir.rpc.deadlines import remaining_s
from cbir.rpc.logs import clean_request_id
from cbir.rpc.status import grpc_errors, status_for
from coordinator.caching import QueryCaches
from coordinator.config import CoordinatorConfig
from coordinator.metrics import CoordinatorMetrics
from coordinator.queries import (
    check_image_id,
    check_k,
    check_params,
    check_vector,
    prepare_query,
)
from coordinator.query_embedder import EmbeddingRunner, check_image_bytes
from coordinator.search import ClusterInfo, DistributedSearch
from protos import cbir_pb2, cbir_pb2_grpc

log = logging.getLogger(__name__)
# One line per Search (INFO) with the request id the shards' access logs also carry.
access_log = logging.getLogger("coordinator.access")


@dataclass
class CoordinatorState:
    """What the background tasks learn and the servicer reads."""

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


def request_id_of(request: cbir_pb2.SearchRequest) -> str:
    """The caller's request id when well-formed (logged and forwarded to the shards as is),
    else a fresh one: an id is for correlating logs, so a malformed one is replaced, not
    refused (the reply carries the id actually used)."""
    return clean_request_id(request.request_id) or os.urandom(8).hex()


class CoordinatorServicer(cbir_pb2_grpc.CoordinatorServicer):
    def __init__(
        self,
        config: CoordinatorConfig,
        state: CoordinatorState,
        search: DistributedSearch,
        metrics: CoordinatorMetrics,
    ) -> None:
        self.config = config
        self.state = state
        self.search = search
        self.metrics = metrics
        self.caches = QueryCaches(config.cache, metrics.cache_lookups)

    @grpc_errors
    async def Search(
        self, request: cbir_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> cbir_pb2.SearchResponse:
        query = request.WhichOneof("query") or "none"
        start = time.monotonic()
        code, partial, version = "OK", False, ""
        request_id = request_id_of(request)
        try:
            reply = await self._search(request, context, request_id)
            partial, version = reply.partial, reply.index_version
            return reply
        except Exception as exc:
            code = status_for(exc).name
            raise
        finally:
            seconds = time.monotonic() - start
            self.metrics.requests.labels(query, code).inc()
            self.metrics.latency.labels(query, code).observe(seconds)
            access_log.info(
                "search request_id=%s query=%s code=%s partial=%s index_version=%s ms=%.2f",
                request_id, query, code, partial, version or "-", seconds * 1000,
            )

    async def _search(
        self, request: cbir_pb2.SearchRequest, context: grpc.aio.ServicerContext, request_id: str
    ) -> cbir_pb2.SearchResponse:
        deadline = time.monotonic() + remaining_s(context, self.config.limits)
        k = check_k(request.k, self.config.limits)
        check_params(request.params.nprobe, request.params.ef_search, self.config.limits)
        info = self.state.require_info()
        key = self.caches.answer_key(request, k, self.search.fanout.pinned_version(),
                                     info.num_shards)
        if (cached := self.caches.get_answer(key)) is not None:
            cached.request_id = request_id
            return cached
        vector, exclude = await self._query_vector(request, info, deadline, request_id)
        answer = await self.search.search(
            prepare_query(vector, info.metric), k, request.params, exclude, deadline, request_id,
            request.filter.strip(),
        )
        if answer.failed_shards:
            self.metrics.partial.inc()
        reply = cbir_pb2.SearchResponse(
            hits=[
                cbir_pb2.Hit(image_id=h.image_id, key=h.key, score=h.score, shard=h.shard)
                for h in answer.hits
            ],
            partial=bool(answer.failed_shards),
            failed_shards=list(answer.failed_shards),
            index_version=answer.index_version,
            metric=answer.metric,
            request_id=request_id,
        )
        self.caches.put_answer(key, reply)
        return reply

    async def _query_vector(
        self, request: cbir_pb2.SearchRequest, info: ClusterInfo, deadline: float,
        request_id: str,
    ) -> tuple[np.ndarray, int | None]:
        query = request.WhichOneof("query")
        if query == "vector":
            return check_vector(request.vector.values, info.dim), None
        if query == "image":
            check_image_bytes(request.image, self.config.limits)
            runner = self.state.require_embedder(info)
            digest, vector = self.caches.get_embedding(request.image)
            if vector is None:
                vector = await runner.embed(request.image)
                self.caches.put_embedding(digest, vector)
            return vector, None
        if query == "image_id":
            check_image_id(request.image_id)
            vector = await self.search.vector_of(request.image_id, deadline, request_id)
            return vector, (request.image_id if request.exclude_query_image else None)
        raise InvalidArgument("the request needs one of: image, vector, image_id")

    @grpc_errors
    async def Info(
        self, request: cbir_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> cbir_pb2.InfoResponse:
        info = self.state.require_info()
        return cbir_pb2.InfoResponse(
            num_shards=info.num_shards,
            dim=info.dim,
            model=info.model,
            model_version=",".join(sorted(info.model_versions)),
            metric=info.metric,
            index_version=self.search.fanout.pinned_version() or info.index_version,
            live_replicas=self.search.fanout.live_counts(),
            replicas={s: len(b.replicas) for s, b in self.search.fanout.balancers.items()},
            shard_counts=dict(info.counts),
            shard_index_versions=dict(info.versions),
            requests_served=self.metrics.requests_served(),
            metadata_columns=[cbir_pb2.MetadataColumn(name=n, type=t)
                              for n, t in info.metadata_columns],
        )
