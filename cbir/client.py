"""Python client of the coordinator.

    from cbir.client import CoordinatorClient
    with CoordinatorClient("127.0.0.1:50052") as client:
        result = client.search_image("cat.jpg", k=10)
        for hit in result.hits:
            print(hit.score, hit.key)

Every call has a timeout (``timeout_s`` per call, else the client's default); gRPC errors are
raised as ``cbir.errors`` types carrying the server's message (``InvalidArgument``,
``NotFound``, ``ResourceExhausted``, ``FailedPrecondition``, ``Unavailable``,
``DeadlineExceeded``). ``AsyncCoordinatorClient`` has the same methods, awaitable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from cbir.client_batch import BatchQueries, BatchQuery, batch_request
from cbir.client_batch import float_vector as _vector
from cbir.client_batch import image_bytes as _image_bytes
from cbir.limits import DEFAULT_LIMITS, Limits
from cbir.rpc.client import DeadlineExceeded, ServerError, aio_channel, error_from_rpc, sync_channel
from cbir.rpc.security import ClientSecurity
from protos import cbir_pb2, cbir_pb2_grpc

__all__ = [
    "AsyncCoordinatorClient",
    "BatchQuery",
    "ClientSecurity",
    "CoordinatorClient",
    "CoordinatorInfo",
    "DeadlineExceeded",
    "Hit",
    "SearchResult",
    "ServerError",
    "UpsertSpec",
    "WriteResult",
]

DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Hit:
    image_id: int
    key: str
    score: float
    shard: int


@dataclass(frozen=True)
class SearchResult:
    hits: tuple[Hit, ...]
    partial: bool
    failed_shards: tuple[int, ...]
    index_version: str
    metric: str
    request_id: str
    # search_batch only: why this query has no answer ("" = answered). error_code is the gRPC
    # status name the query alone would have got from Search, e.g. "NOT_FOUND".
    error_code: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error_code

    def to_json(self) -> dict[str, Any]:
        """``{"hits": [{"image_id", "key", "score", "shard"}], "partial", "failed_shards", ...}``
        (plus ``error_code`` and ``error`` for a batch query that failed)."""
        data = asdict(self)
        data["hits"] = [asdict(h) for h in self.hits]
        data["failed_shards"] = list(self.failed_shards)
        if self.ok:
            del data["error_code"], data["error"]
        return data


@dataclass(frozen=True)
class CoordinatorInfo:
    num_shards: int
    dim: int
    model: str
    model_version: str
    metric: str
    index_version: str
    live_replicas: dict[int, int]
    replicas: dict[int, int] = field(default_factory=dict)  # known, in rotation or ejected
    shard_counts: dict[int, int] = field(default_factory=dict)
    shard_index_versions: dict[int, str] = field(default_factory=dict)
    requests_served: int = 0
    # What a filter may name: column -> Arrow type (docs/filters.md).
    metadata_columns: dict[str, str] = field(default_factory=dict)


def _request(k: int, nprobe: int, ef_search: int, request_id: str, filter: str,
             **query: Any) -> cbir_pb2.SearchRequest:
    """``filter``: a metadata filter such as ``"width >= 640 AND label IN ('cat')"``
    (docs/filters.md); "" = none."""
    return cbir_pb2.SearchRequest(
        k=k, params=cbir_pb2.SearchParams(nprobe=nprobe, ef_search=ef_search),
        request_id=request_id, filter=filter, **query,
    )


def _result(reply: cbir_pb2.SearchResponse) -> SearchResult:
    return SearchResult(
        hits=tuple(Hit(h.image_id, h.key, float(h.score), h.shard) for h in reply.hits),
        partial=reply.partial,
        failed_shards=tuple(reply.failed_shards),
        index_version=reply.index_version,
        metric=reply.metric,
        request_id=reply.request_id,
    )


def _batch_results(reply: cbir_pb2.SearchBatchResponse) -> list[SearchResult]:
    return [SearchResult(
        hits=tuple(Hit(h.image_id, h.key, float(h.score), h.shard) for h in r.hits),
        partial=r.partial, failed_shards=tuple(r.failed_shards),
        index_version=reply.index_version, metric=reply.metric, request_id=reply.request_id,
        error_code=r.error_code, error=r.error,
    ) for r in reply.results]


def _info(reply: cbir_pb2.InfoResponse) -> CoordinatorInfo:
    return CoordinatorInfo(
        num_shards=reply.num_shards, dim=reply.dim, model=reply.model,
        model_version=reply.model_version, metric=reply.metric,
        index_version=reply.index_version, live_replicas=dict(reply.live_replicas),
        replicas=dict(reply.replicas), shard_counts=dict(reply.shard_counts),
        shard_index_versions=dict(reply.shard_index_versions),
        requests_served=reply.requests_served,
        metadata_columns={c.name: c.type for c in reply.metadata_columns},
    )


@dataclass(frozen=True)
class UpsertSpec:
    """One image to add or replace: its S3 key plus, optionally, its bytes (else the
    coordinator fetches the object) or a ready vector of the served dim."""

    key: str
    image: bytes | str | Path | None = None
    vector: Sequence[float] | np.ndarray | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteResult:
    """One item's answer: ``status`` "ok" (durable, in shard ``shard``'s log entry ``seq``) or
    "error" with the ``reason``."""

    key: str
    image_id: int
    status: str
    reason: str
    shard: int
    seq: int

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "image_id": self.image_id, "image_id_str": str(self.image_id),
                "status": self.status, "reason": self.reason}


def _upsert_request(items: Sequence[UpsertSpec], request_id: str) -> cbir_pb2.UpsertRequest:
    return cbir_pb2.UpsertRequest(request_id=request_id, items=[cbir_pb2.UpsertItem(
        key=item.key,
        image=_image_bytes(item.image) if item.image is not None else b"",
        vector=_vector(item.vector) if item.vector is not None else None,
        attributes=item.attributes,
    ) for item in items])


def _delete_request(keys: Sequence[str], image_ids: Sequence[int],
                    request_id: str) -> cbir_pb2.DeleteRequest:
    return cbir_pb2.DeleteRequest(keys=list(keys), image_ids=[int(i) for i in image_ids],
                                  request_id=request_id)


def _writes(reply: cbir_pb2.WriteResponse) -> list[WriteResult]:
    return [WriteResult(r.key, r.image_id, r.status, r.reason, r.shard, r.seq)
            for r in reply.items]


@contextlib.contextmanager
def _cbir_errors(address: str, security: ClientSecurity | None) -> Iterator[None]:
    """gRPC errors (sync or aio) as the cbir error their status stands for."""
    try:
        yield
    except grpc.RpcError as exc:
        secure = security is not None and security.tls is not None
        raise error_from_rpc(exc, address, secure) from None


class CoordinatorClient:
    """Synchronous client; thread-safe (one gRPC channel)."""

    def __init__(
        self,
        address: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        limits: Limits = DEFAULT_LIMITS,
        security: ClientSecurity | None = None,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.security = security
        self._channel = sync_channel(address, limits, security)
        self._stub = cbir_pb2_grpc.CoordinatorStub(self._channel)

    def search_image(self, image: bytes | str | Path, k: int = 10, *, nprobe: int = 0,
                     ef_search: int = 0, request_id: str = "", filter: str = "",
                     timeout_s: float | None = None) -> SearchResult:
        request = _request(k, nprobe, ef_search, request_id, filter, image=_image_bytes(image))
        return self._search(request, timeout_s)

    def search_vector(self, vector: Sequence[float] | np.ndarray, k: int = 10, *,
                      nprobe: int = 0, ef_search: int = 0, request_id: str = "",
                      filter: str = "", timeout_s: float | None = None) -> SearchResult:
        request = _request(k, nprobe, ef_search, request_id, filter, vector=_vector(vector))
        return self._search(request, timeout_s)

    def search_id(self, image_id: int, k: int = 10, *, exclude_query_image: bool = False,
                  nprobe: int = 0, ef_search: int = 0, request_id: str = "",
                  filter: str = "", timeout_s: float | None = None) -> SearchResult:
        request = _request(k, nprobe, ef_search, request_id, filter, image_id=image_id,
                           exclude_query_image=exclude_query_image)
        return self._search(request, timeout_s)

    def search_batch(self, queries: BatchQueries, k: int = 10, *,
                     exclude_query_image: bool = False, nprobe: int = 0, ef_search: int = 0,
                     request_id: str = "", filter: str = "",
                     timeout_s: float | None = None) -> list[SearchResult]:
        """Many queries in one request (``BatchQuery`` items, or a 2-D array of vectors): one
        result per query, in order; a failed query has ``error_code`` set (the others are
        answered). A bad request as a whole (too many queries, bad k) raises."""
        request = batch_request(queries, k, nprobe, ef_search, exclude_query_image,
                                request_id, filter)
        with _cbir_errors(self.address, self.security):
            reply = self._stub.SearchBatch(request, timeout=timeout_s or self.timeout_s)
        return _batch_results(reply)

    def info(self, timeout_s: float | None = None) -> CoordinatorInfo:
        with _cbir_errors(self.address, self.security):
            reply = self._stub.Info(cbir_pb2.InfoRequest(), timeout=timeout_s or self.timeout_s)
        return _info(reply)

    def _search(self, request: cbir_pb2.SearchRequest, timeout_s: float | None) -> SearchResult:
        with _cbir_errors(self.address, self.security):
            reply = self._stub.Search(request, timeout=timeout_s or self.timeout_s)
        return _result(reply)

    def upsert(self, items: Sequence[UpsertSpec], *, request_id: str = "",
               timeout_s: float | None = None) -> list[WriteResult]:
        """Add or replace images (needs the ``write`` role when tokens are configured)."""
        with _cbir_errors(self.address, self.security):
            reply = self._stub.Upsert(_upsert_request(items, request_id),
                                      timeout=timeout_s or self.timeout_s)
        return _writes(reply)

    def delete(self, keys: Sequence[str] = (), image_ids: Sequence[int] = (), *,
               request_id: str = "", timeout_s: float | None = None) -> list[WriteResult]:
        """Remove images by key and/or id (an unknown one is "ok": deletes are idempotent)."""
        with _cbir_errors(self.address, self.security):
            reply = self._stub.Delete(_delete_request(keys, image_ids, request_id),
                                      timeout=timeout_s or self.timeout_s)
        return _writes(reply)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncCoordinatorClient:
    """The same API for asyncio code (grpc.aio); create it inside the running loop."""

    def __init__(
        self,
        address: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        limits: Limits = DEFAULT_LIMITS,
        security: ClientSecurity | None = None,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.security = security
        self._channel = aio_channel(address, limits, security)
        self._stub = cbir_pb2_grpc.CoordinatorStub(self._channel)

    async def search_image(self, image: bytes | str | Path, k: int = 10, *, nprobe: int = 0,
                           ef_search: int = 0, request_id: str = "",
                           filter: str = "", timeout_s: float | None = None) -> SearchResult:
        request = _request(k, nprobe, ef_search, request_id, filter, image=_image_bytes(image))
        return await self._search(request, timeout_s)

    async def search_vector(self, vector: Sequence[float] | np.ndarray, k: int = 10, *,
                            nprobe: int = 0, ef_search: int = 0, request_id: str = "",
                            filter: str = "", timeout_s: float | None = None) -> SearchResult:
        request = _request(k, nprobe, ef_search, request_id, filter, vector=_vector(vector))
        return await self._search(request, timeout_s)

    async def search_id(self, image_id: int, k: int = 10, *, exclude_query_image: bool = False,
                        nprobe: int = 0, ef_search: int = 0, request_id: str = "",
                        filter: str = "", timeout_s: float | None = None) -> SearchResult:
        request = _request(k, nprobe, ef_search, request_id, filter, image_id=image_id,
                           exclude_query_image=exclude_query_image)
        return await self._search(request, timeout_s)

    async def search_batch(self, queries: BatchQueries, k: int = 10, *,
                           exclude_query_image: bool = False, nprobe: int = 0,
                           ef_search: int = 0, request_id: str = "", filter: str = "",
                           timeout_s: float | None = None) -> list[SearchResult]:
        request = batch_request(queries, k, nprobe, ef_search, exclude_query_image,
                                request_id, filter)
        with _cbir_errors(self.address, self.security):
            reply = await self._stub.SearchBatch(request, timeout=timeout_s or self.timeout_s)
        return _batch_results(reply)

    async def info(self, timeout_s: float | None = None) -> CoordinatorInfo:
        with _cbir_errors(self.address, self.security):
            reply = await self._stub.Info(cbir_pb2.InfoRequest(),
                                          timeout=timeout_s or self.timeout_s)
        return _info(reply)

    async def _search(
        self, request: cbir_pb2.SearchRequest, timeout_s: float | None
    ) -> SearchResult:
        with _cbir_errors(self.address, self.security):
            reply = await self._stub.Search(request, timeout=timeout_s or self.timeout_s)
        return _result(reply)

    async def upsert(self, items: Sequence[UpsertSpec], *, request_id: str = "",
                     timeout_s: float | None = None) -> list[WriteResult]:
        with _cbir_errors(self.address, self.security):
            reply = await self._stub.Upsert(_upsert_request(items, request_id),
                                            timeout=timeout_s or self.timeout_s)
        return _writes(reply)

    async def delete(self, keys: Sequence[str] = (), image_ids: Sequence[int] = (), *,
                     request_id: str = "", timeout_s: float | None = None) -> list[WriteResult]:
        with _cbir_errors(self.address, self.security):
            reply = await self._stub.Delete(_delete_request(keys, image_ids, request_id),
                                            timeout=timeout_s or self.timeout_s)
        return _writes(reply)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncCoordinatorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
