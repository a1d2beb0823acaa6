"""SearchBatch's own rules (no grpc): the batch's bounds, and turning many queries into
vectors with one call per dependency - one GetVectors per shard for the image ids, one model
batch for the images - where a bad query fails alone, never its batch."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from cbir.errors import (
    CbirError,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from cbir.ids import shard_of
from cbir.limits import Limits
from coordinator.caching import QueryCaches
from coordinator.fanout import ShardCallFailed
from coordinator.queries import IndexParams, check_image_id, check_vector
from coordinator.query_embedder import EmbeddingRunner, check_image_bytes
from coordinator.search import (
    ClusterInfo,
    DistributedSearch,
    SearchAnswer,
    StoredVector,
)

# Per query: its vector (for an image id: with the log position it was read at), or why it
# has none (a CbirError the caller sees for that query only).
Resolved = np.ndarray | StoredVector | CbirError


@dataclass(frozen=True)
class BatchItem:
    """One query of a batch: exactly one of the three is set (like ``service.Query``)."""

    image: bytes | None = None
    vector: Sequence[float] | None = None
    image_id: int | None = None


@dataclass(frozen=True)
class BatchQuery:
    """Many queries sharing k, params, filter and exclude_query_image."""

    items: Sequence[BatchItem]
    k: int = 0
    params: IndexParams = field(default_factory=IndexParams)
    exclude_query_image: bool = False
    request_id: str = ""
    time_remaining_s: float | None = None
    filter: str = ""


@dataclass(frozen=True)
class BatchAnswer:
    """Per query, in order, its answer or its error; the version every answer was made in."""

    results: list[SearchAnswer | CbirError]
    index_version: str
    metric: str


def check_batch(batch: BatchQuery, limits: Limits) -> None:
    """The bounds, checked before any query is converted, embedded or searched."""
    n = len(batch.items)
    if n == 0:
        raise InvalidArgument("a SearchBatch request needs at least one query")
    if n > limits.max_batch:
        raise ResourceExhausted(f"{n} queries in one SearchBatch exceed the limit of "
                                f"{limits.max_batch}; split the batch")
    images = sum(item.image is not None for item in batch.items)
    if images > limits.max_batch_images:
        raise ResourceExhausted(f"{images} image queries in one SearchBatch exceed the limit of "
                                f"{limits.max_batch_images}; split the batch")


def packed_rows(vectors: bytes, dim: int, has_queries: bool, limits: Limits) -> np.ndarray:
    """The packed vector queries as an (n, dim) float32 view, the count checked before any row
    becomes a query (a 32 MiB message of dim 1 would otherwise be 8M query objects)."""
    if has_queries:
        raise InvalidArgument("a SearchBatch request carries `queries` or packed `vectors`, "
                              "not both")
    if dim <= 0 or len(vectors) % (4 * dim):
        raise InvalidArgument(f"packed vectors of {len(vectors)} bytes are not rows of dim "
                              f"{dim} float32 values")
    n = len(vectors) // (4 * dim)
    if n > limits.max_batch:
        raise ResourceExhausted(f"{n} queries in one SearchBatch exceed the limit of "
                                f"{limits.max_batch}; split the batch")
    return np.frombuffer(vectors, dtype="<f4").reshape(n, dim)


def _vector_of(item: BatchItem, dim: int) -> Resolved | None:
    """A raw vector query checked (None: the item is not a vector query)."""
    if item.vector is None:
        if item.image is None and item.image_id is None:
            return InvalidArgument("the query needs one of: image, vector, image_id")
        return None
    try:
        return check_vector(item.vector, dim)
    except CbirError as exc:
        return exc


async def resolve_vectors(items: Sequence[BatchItem], info: ClusterInfo,
                          runner: EmbeddingRunner | CbirError, search: DistributedSearch,
                          caches: QueryCaches, limits: Limits, deadline: float,
                          request_id: str) -> list[Resolved]:
    """Each query's vector (float64/float32, not yet prepared for the metric) or its error."""
    out: list[Resolved | None] = [_vector_of(item, info.dim) for item in items]
    ids = [i for i, item in enumerate(items) if item.image_id is not None]
    images = [i for i, item in enumerate(items) if item.image is not None]
    by_id, by_image = await asyncio.gather(
        vectors_by_id([items[i].image_id for i in ids],  # type: ignore[misc]
                      search, deadline, request_id),
        embed_images([items[i].image for i in images],  # type: ignore[misc]
                     runner, caches, limits))
    for i, resolved in zip(ids + images, by_id + by_image, strict=True):
        out[i] = resolved
    return [r if r is not None else InvalidArgument("empty query") for r in out]


async def embed_images(images: list[bytes], runner: EmbeddingRunner | CbirError,
                       caches: QueryCaches, limits: Limits) -> list[Resolved]:
    """Every image not in the embedding cache embedded in ONE model batch."""
    out: list[Resolved | None] = [None] * len(images)
    digests: list[str] = [""] * len(images)
    for i, image in enumerate(images):
        try:
            check_image_bytes(image, limits)
        except CbirError as exc:
            out[i] = exc
            continue
        if isinstance(runner, CbirError):
            out[i] = runner
            continue
        digests[i], out[i] = caches.get_embedding(image)
    todo = [i for i, o in enumerate(out) if o is None]
    if todo and isinstance(runner, EmbeddingRunner):
        try:
            vectors: Sequence[Resolved] = await runner.embed_many([images[i] for i in todo])
        except CbirError as exc:  # e.g. the embedder's queue is full: these images only
            vectors = [exc] * len(todo)
        for i, vector in zip(todo, vectors, strict=True):
            out[i] = vector
            if isinstance(vector, np.ndarray):
                caches.put_embedding(digests[i], vector)
    return [o if o is not None else Unavailable("no embedding") for o in out]


async def vectors_by_id(image_ids: list[int], search: DistributedSearch, deadline: float,
                        request_id: str) -> list[Resolved]:
    """The stored vector of each id, with ONE GetVectors per shard holding any of them."""
    out: list[Resolved | None] = [None] * len(image_ids)
    by_shard: dict[int, list[int]] = defaultdict(list)
    for i, image_id in enumerate(image_ids):
        try:
            check_image_id(image_id)
        except CbirError as exc:
            out[i] = exc
            continue
        by_shard[shard_of(image_id, search.num_shards)].append(i)
    found = await asyncio.gather(*(
        _shard_vectors(search, shard, sorted({image_ids[i] for i in rows}), deadline,
                       request_id)
        for shard, rows in by_shard.items()))
    for rows, vectors in zip(by_shard.values(), found, strict=True):
        for i in rows:
            if isinstance(vectors, CbirError):
                out[i] = vectors
            else:
                out[i] = vectors.get(image_ids[i], NotFound(f"unknown image id {image_ids[i]}"))
    return [o if o is not None else NotFound("no vector") for o in out]


async def _shard_vectors(search: DistributedSearch, shard: int, image_ids: list[int],
                         deadline: float, request_id: str
                         ) -> dict[int, Resolved] | CbirError:
    try:
        reply, applied_seq = await search.fetch_vectors(shard, image_ids, deadline, request_id)
    except ShardCallFailed as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:  # every id unknown
            return {}
        if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"deadline exceeded fetching image ids from shard {shard}")
        return Unavailable(f"shard {shard}, which holds this image id, is unavailable: "
                           f"{exc.reason}")
    if reply.dim <= 0:
        return {}
    vectors = np.frombuffer(reply.vectors, dtype="<f4").reshape(-1, reply.dim)
    return {int(i): StoredVector(np.array(vectors[row], dtype=np.float32), shard, applied_seq)
            for row, i in enumerate(reply.image_ids)}
