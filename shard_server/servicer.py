"""cbir.v1.Shard servicer: proto <-> domain translation only (the core is ShardSearcher)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from cbir.cache import APPLIED_SEQ_METADATA
from cbir.faiss_params import EF_SEARCH, NPROBE
from cbir.rpc.logs import clean_request_id, safe_text
from cbir.rpc.status import grpc_errors, outcome_recorded
from protos import cbir_pb2, cbir_pb2_grpc
from shard_server.admin import IndexPolicy
from shard_server.filtering import schema_of
from shard_server.metrics import ShardMetrics
from shard_server.searcher import ShardSearcher

R = TypeVar("R")
# One line per RPC (INFO): method, status, request id (the coordinator's, propagated), latency.
access_log = logging.getLogger("shard_server.access")
Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


_QUIET = frozenset({"OK", "CANCELLED"})


def _log_access(name: str, code: str, request: Any, seconds: float) -> None:
    """The per-RPC line: INFO when the call succeeded, WARNING when it did not (so failed calls
    keep their request id in the log at the default level, successes cost nothing there).
    A call the client cancelled is its own business: INFO too."""
    level = logging.INFO if code in _QUIET else logging.WARNING
    access_log.log(level, "rpc method=%s code=%s request_id=%s ms=%.2f", name, code,
                   clean_request_id(getattr(request, "request_id", "")) or "-", seconds * 1000)


def observed(name: str) -> Callable[[Method[R]], Method[R]]:
    """Count and time an RPC by status code (sits inside grpc_errors, sees the core's errors)."""

    def decorate(method: Method[R]) -> Method[R]:
        @functools.wraps(method)
        async def wrapper(self: ShardServicer, request: Any,
                          context: grpc.aio.ServicerContext) -> R:
            def record(code: str, seconds: float) -> None:
                self.metrics.observe(name, code, seconds)
                if code not in _QUIET or access_log.isEnabledFor(logging.INFO):
                    _log_access(name, code, request, seconds)

            with outcome_recorded(record):
                return await method(self, request, context)

        return wrapper

    return decorate


class ShardServicer(cbir_pb2_grpc.ShardServicer):
    def __init__(self, searcher: ShardSearcher, metrics: ShardMetrics, policy: IndexPolicy,
                 pointer_target: Callable[[], str] = lambda: "",
                 loaded: Callable[[str], None] = lambda uri: None) -> None:
        self.searcher = searcher
        self.metrics = metrics
        self.policy = policy
        self.pointer_target = pointer_target  # the pointer's content at its last read
        self.loaded = loaded  # told the URI a LoadIndex swapped in (workers pass it on)

    @grpc_errors
    @observed("Search")
    async def Search(
        self, request: cbir_pb2.ShardSearchRequest, context: grpc.aio.ServicerContext
    ) -> cbir_pb2.ShardSearchResponse:
        params = {NPROBE: request.params.nprobe, EF_SEARCH: request.params.ef_search}
        result = await self.searcher.search(
            request.vectors, request.dim, request.k, params, request.index_version,
            request.filter,
        )
        self.metrics.queries.inc(len(result.ids))
        return cbir_pb2.ShardSearchResponse(
            shard=self.searcher.config.shard,
            num_queries=len(result.ids),
            k=request.k,
            ids=result.ids.astype("<i8").tobytes(),
            scores=result.scores.astype("<f4").tobytes(),
            keys=result.keys,
            index_version=result.index_version,
            metric="ip",
            applied_seq=result.applied_seq,
        )

    @grpc_errors
    @observed("GetVectors")
    async def GetVectors(
        self, request: cbir_pb2.GetVectorsRequest, context: grpc.aio.ServicerContext
    ) -> cbir_pb2.GetVectorsResponse:
        result = await self.searcher.get_vectors(list(request.image_ids))
        # The message has no field for it: the log position rides in trailing metadata (the
        # coordinator's cache keys image-id answers by the state the query vector came from).
        context.set_trailing_metadata(((APPLIED_SEQ_METADATA, str(result.applied_seq)),))
        return cbir_pb2.GetVectorsResponse(
            dim=result.dim,
            image_ids=result.ids,
            vectors=np.asarray(result.vectors, dtype="<f4").tobytes(),
            keys=result.keys,
            missing_ids=result.missing,
        )

    @grpc_errors
    @observed("Stats")
    async def Stats(
        self, request: cbir_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> cbir_pb2.StatsResponse:
        loaded = self.searcher.store.current()
        m = loaded.manifest
        view = loaded.live.get()  # the live state: base - tombstones + delta
        return cbir_pb2.StatsResponse(
            shard=m.shard, num_shards=m.num_shards, count=view.count, dim=m.dim, metric=m.metric,
            factory=m.factory, index_version=m.index_version, model=m.model,
            model_version=m.model_version, search_params=self.searcher.defaults(loaded),
            memory_bytes=loaded.memory_bytes, queries_served=self.searcher.queries_served,
            held_versions=self.searcher.store.held_versions(),
            index_uri=loaded.uri, index_pointer=self.policy.index_pointer or "",
            pointer_target=self.pointer_target(), applied_seq=view.applied_seq,
            worker_pid=os.getpid(),
            metadata_columns=[cbir_pb2.MetadataColumn(name=f.name, type=str(f.type))
                              for f in schema_of(loaded)],
        )

    @grpc_errors
    @observed("ApplyLog")
    async def ApplyLog(
        self, request: cbir_pb2.ApplyLogRequest, context: grpc.aio.ServicerContext
    ) -> cbir_pb2.ApplyLogResponse:
        applied = await self.searcher.apply_log(request.seq)
        return cbir_pb2.ApplyLogResponse(applied_seq=applied)

    @grpc_errors
    @observed("LoadIndex")
    async def LoadIndex(
        self, request: cbir_pb2.LoadIndexRequest, context: grpc.aio.ServicerContext
    ) -> cbir_pb2.LoadIndexResponse:
        try:
            uri = self.policy.check_manual_load(request.index_uri)
            new, old = await self.searcher.load(uri)
        except Exception:
            self.metrics.load_failed("rpc")
            raise
        self.metrics.index_loaded(new, "rpc")
        self.loaded(new.uri)
        return cbir_pb2.LoadIndexResponse(
            swapped=True,
            index_version=new.version,
            previous_version=old.version if old else "",
            message=f"serving {safe_text(new.version)} ({new.manifest.count} vectors) "
                    f"from {safe_text(new.uri)}",
        )
