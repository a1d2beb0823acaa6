"""The request and answer of ``SearchBatch`` for ``cbir.client`` (many queries, one request).

A query is a ``BatchQuery`` (exactly one of image / vector / image_id); a 2-D array is a batch
of vectors. The answer is one ``SearchResult`` per query, in order; a query the coordinator
could not answer (unknown image id, undecodable image, wrong dim...) has ``error_code`` (the
gRPC status name, e.g. "NOT_FOUND") and ``error`` set and no hits - the others are answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbir.errors import InvalidArgument
from protos import cbir_pb2


@dataclass(frozen=True)
class BatchQuery:
    """One query of a batch: set exactly one field."""

    image: bytes | str | Path | None = None
    vector: Sequence[float] | np.ndarray | None = None
    image_id: int | None = None

    def __post_init__(self) -> None:
        given = sum(v is not None for v in (self.image, self.vector, self.image_id))
        if given != 1:
            raise InvalidArgument("a batch query needs exactly one of image, vector, image_id")


BatchQueries = Sequence[BatchQuery] | np.ndarray


def image_bytes(image: bytes | str | Path) -> bytes:
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    path = Path(image)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read image file {path}: {exc.strerror}") from exc


def float_vector(values: Sequence[float] | np.ndarray) -> cbir_pb2.FloatVector:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 1:
        raise InvalidArgument(f"a query vector is one-dimensional, got shape {array.shape}")
    return cbir_pb2.FloatVector(values=array.tolist())


def _query(q: BatchQuery) -> cbir_pb2.SearchBatchRequest.Query:
    if q.image is not None:
        return cbir_pb2.SearchBatchRequest.Query(image=image_bytes(q.image))
    if q.vector is not None:
        return cbir_pb2.SearchBatchRequest.Query(vector=float_vector(q.vector))
    return cbir_pb2.SearchBatchRequest.Query(image_id=int(q.image_id or 0))


def batch_request(queries: BatchQueries, k: int, nprobe: int, ef_search: int,
                  exclude_query_image: bool, request_id: str, filter: str
                  ) -> cbir_pb2.SearchBatchRequest:
    request = cbir_pb2.SearchBatchRequest(
        k=k, params=cbir_pb2.SearchParams(nprobe=nprobe, ef_search=ef_search),
        exclude_query_image=exclude_query_image, request_id=request_id, filter=filter)
    if isinstance(queries, np.ndarray):
        if queries.ndim != 2:
            raise InvalidArgument(f"a batch of vectors is a 2-D array, got shape {queries.shape}")
        # Packed: one bytes field instead of a repeated float message per query.
        request.vectors = np.ascontiguousarray(queries, dtype="<f4").tobytes()
        request.dim = queries.shape[1]
    else:
        request.queries.extend(_query(q) for q in queries)
    return request
