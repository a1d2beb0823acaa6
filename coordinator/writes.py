"""Write routing (no grpc): upsert / delete items -> image ids -> one log entry per shard.

Each item is resolved on its own (a bad image or a wrong-sized vector is that item's error, not
the request's); the good ones are grouped by ``image_id % num_shards`` and appended to each
shard's write-ahead log, all shards at once. An item is acknowledged ("ok", with its shard and
log position) only after its shard's entry exists; if one shard's log cannot be written, that
shard's items answer "unavailable" and may be retried: upserts and deletes are idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cbir import ids, storage
from cbir.errors import CbirError
from cbir.wal import Delete, Operation, ShardLog, Upsert

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


Embed = Callable[[bytes], Awaitable[np.ndarray]]  # raises a CbirError for a bad image
Fetch = Callable[[str], Awaitable[bytes]]


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
        labels = [*keys, *(str(i) for i in image_ids)]
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
            vector = await self._vector_of(item)
        except (CbirError, ValueError) as exc:
            return ItemResult(item.key, image_id, ERROR, str(exc))
        return Upsert(image_id, item.key, vector, dict(item.attributes))

    async def _vector_of(self, item: UpsertItem) -> np.ndarray:
        if item.vector is not None:
            return unit_vector(item.vector, self.target.dim)
        image = item.image if item.image is not None else await self.fetch(item.key)
        return unit_vector(await self.embed(image), self.target.dim)

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
                results[i] = result
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
