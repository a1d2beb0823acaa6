"""Write routing (no grpc): upsert / delete items -> image ids -> one log entry per shard.

Each item is resolved on its own (a bad image or a wrong-sized vector is that item's error, not
the request's); the good ones are grouped by ``image_id % num_shards`` and appended to each
shard's write-ahead log, all shards at once. An item is acknowledged ("ok", with its shard and
log position) only after its shard's entry exists; if one shard's log cannot be written, that
shard's items answer "unavailable" and may be retried: upserts and deletes are idempotent.

An upserted row gets the metadata a backfilled row has (docs/live_updates.md): from image bytes
their size, width, height (after EXIF orientation) and content type; from a fetched object also
S3's Content-Type, Last-Modified and user metadata (``x-amz-meta-*``, as attributes under the
item's own); nothing for an upsert by vector. Attributes are checked against the column types
the shards report (``cbir.live_metadata``): one that does not fit its column is the item's error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from cbir import ids, storage
from cbir.errors import CbirError
from cbir.live_metadata import check_attributes
from cbir.wal import Delete, ObjectInfo, Operation, ShardLog, Upsert

OK, ERROR = "ok", "error"


@dataclass(frozen=True)
class UpsertItem:
    key: str  # s3://bucket/key: the image id is derived from it
    image: bytes | None = None  # else the vector, else the object is fetched from the store
    vector: np.ndarray | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemResult:
    key: str
    image_id: int
    status: str  # OK | ERROR
    reason: str = ""
    shard: int = -1
    seq: int = 0  # the log entry that holds the write


@dataclass(frozen=True)
class WriteTarget:
    wal_root: str
    num_shards: int
    dim: int
    model_version: str
    # What a filter may name on the shards: (column, Arrow type), to check attributes against.
    metadata_columns: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class FetchedObject:
    """An object read from the store, with what its GET response said about it."""

    data: bytes
    content_type: str | None = None
    last_modified: dt.datetime | None = None
    user_metadata: dict[str, str] = field(default_factory=dict)


Embed = Callable[[bytes], Awaitable[np.ndarray]]  # raises a CbirError for a bad image
Fetch = Callable[[str], Awaitable[FetchedObject]]
# EXIF orientations that swap width and height (as cbir.embedding.preprocess applies them).
_TRANSPOSING = {5, 6, 7, 8}


def unit_vector(values: np.ndarray, dim: int) -> np.ndarray:
    """The vector L2-normalised in float64 (so huge finite values do not overflow to inf/0)."""
    vec = np.asarray(values, dtype=np.float64).reshape(-1)
    if vec.shape != (dim,):
        raise ValueError(f"vector has {vec.size} values, the index serves dim {dim}")
    if not np.isfinite(vec).all():
        raise ValueError("vector contains NaN or infinity")
    scale = np.abs(vec).max()
    norm = np.linalg.norm(vec / scale) * scale if scale > 0 else 0.0
    if not norm > 0 or not np.isfinite(norm):
        raise ValueError("vector has zero length")
    return (vec / norm).astype(np.float32)


class WriteRouter:
    def __init__(self, target: WriteTarget, embed: Embed, fetch: Fetch) -> None:
        self.target = target
        self.embed = embed
        self.fetch = fetch
        self.logs = [ShardLog(target.wal_root, s) for s in range(target.num_shards)]

    async def upsert(self, items: Sequence[UpsertItem]) -> list[ItemResult]:
        resolved = await asyncio.gather(*(self._resolve(item) for item in items))
        ops: list[tuple[int, Operation | ItemResult]] = [
            (i, r) for i, r in enumerate(resolved)
        ]
        return await self._commit(ops, [item.key for item in items])

    async def delete(self, keys: Sequence[str], image_ids: Sequence[int]) -> list[ItemResult]:
        # A delete by key answers with that key (the log entry holds only the id); one by id has
        # no key to give.
        labels = [*keys, *("" for _ in image_ids)]
        ops: list[tuple[int, Operation | ItemResult]] = []
        for i, key in enumerate(keys):
            ops.append((i, self._delete_key(key)))
        for j, image_id in enumerate(image_ids, start=len(keys)):
            ops.append((j, Delete(int(image_id)) if 0 <= image_id < 2**63 else
                        ItemResult("", int(image_id), ERROR, "image id out of range")))
        return await self._commit(ops, labels)

    def _delete_key(self, key: str) -> Operation | ItemResult:
        problem = _bad_key(key)
        return ItemResult(key, -1, ERROR, problem) if problem else Delete(ids.image_id(key))

    async def _resolve(self, item: UpsertItem) -> Operation | ItemResult:
        problem = _bad_key(item.key)
        if problem:
            return ItemResult(item.key, -1, ERROR, problem)
        image_id = ids.image_id(item.key)
        try:
            vector, info, attributes = await self._content_of(item)
        except (CbirError, ValueError) as exc:
            return ItemResult(item.key, image_id, ERROR, str(exc))
        problem = check_attributes(attributes, dict(self.target.metadata_columns))
        if problem:
            return ItemResult(item.key, image_id, ERROR, problem)
        return Upsert(image_id, item.key, vector, attributes, info)

    async def _content_of(self, item: UpsertItem
                          ) -> tuple[np.ndarray, ObjectInfo, dict[str, str]]:
        """(unit vector, object metadata, attributes) of an item."""
        if item.vector is not None:
            return unit_vector(item.vector, self.target.dim), ObjectInfo(), dict(item.attributes)
        if item.image is not None:
            fetched = FetchedObject(item.image)
        else:
            fetched = await self.fetch(item.key)
        vector = unit_vector(await self.embed(fetched.data), self.target.dim)
        return vector, object_info(fetched), {**fetched.user_metadata, **item.attributes}

    async def _commit(
        self, ops: list[tuple[int, Operation | ItemResult]], labels: Sequence[str]
    ) -> list[ItemResult]:
        results: list[ItemResult | None] = [None] * len(labels)
        by_shard: dict[int, list[tuple[int, Operation]]] = {}
        for i, op in ops:
            if isinstance(op, ItemResult):
                results[i] = op
            else:
                shard = ids.shard_of(op.image_id, self.target.num_shards)
                by_shard.setdefault(shard, []).append((i, op))
        outcomes = await asyncio.gather(
            *(self._append(shard, batch) for shard, batch in by_shard.items())
        )
        for batch_results in outcomes:
            for i, result in batch_results:
                results[i] = result if result.key else replace(result, key=labels[i])
        return [r if r is not None else ItemResult(labels[i], -1, ERROR, "not processed")
                for i, r in enumerate(results)]

    async def _append(
        self, shard: int, batch: list[tuple[int, Operation]]
    ) -> list[tuple[int, ItemResult]]:
        log = self.logs[shard]
        try:
            seq = await asyncio.to_thread(
                log.append, [op for _, op in batch], self.target.model_version
            )
        except CbirError as exc:
            return [(i, ItemResult(_key_of(op), op.image_id, ERROR, f"unavailable: {exc}", shard))
                    for i, op in batch]
        return [(i, ItemResult(_key_of(op), op.image_id, OK, "", shard, seq)) for i, op in batch]


def object_info(fetched: FetchedObject) -> ObjectInfo:
    """Size, width, height and content type of an embedded image (its header was read once
    already by the embedder: this only reads it again, no pixels), plus what S3 said."""
    width = height = None
    kind = None
    try:
        with Image.open(io.BytesIO(fetched.data)) as img:
            width, height = img.size
            if _orientation(img) in _TRANSPOSING:
                width, height = height, width
            kind = Image.MIME.get(img.format or "")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        pass  # the embedder accepted it: an unreadable header only leaves the columns null
    return ObjectInfo(size=len(fetched.data), width=width, height=height,
                      content_type=fetched.content_type or kind,
                      last_modified=fetched.last_modified)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # malformed EXIF: upright, as the embedder reads it
        return 1


def _key_of(op: Operation) -> str:
    return op.key if isinstance(op, Upsert) else ""


def _bad_key(key: str) -> str:
    if not storage.is_s3(key):
        return f"key must be an s3:// URI, got {key[:100]!r}"
    try:
        loc = storage.parse_s3(key)
    except CbirError as exc:
        return str(exc)
    return "" if loc.key and not loc.key.endswith("/") else f"key names no object: {key[:100]!r}"
