"""Write routing into the per-shard logs: per-item results, routing by image_id % N, vectors
normalised without overflow, and every acknowledged item present in its shard's log."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cbir import ids
from cbir.errors import InvalidArgument
from cbir.wal import Delete, ShardLog, Upsert
from coordinator.writes import (
    ERROR,
    OK,
    FetchedObject,
    UpsertItem,
    WriteRouter,
    WriteTarget,
    unit_vector,
)

DIM = 8


async def _embed(image: bytes) -> np.ndarray:
    if image == b"broken":
        raise InvalidArgument("not_an_image: cannot identify image file")
    return np.frombuffer(image.ljust(DIM * 4, b"\x01")[: DIM * 4], dtype=np.uint8)[:DIM].astype(
        np.float32) + 1


async def _fetch(key: str) -> FetchedObject:
    return FetchedObject(key.encode())


def _router(root: str, shards: int = 3) -> WriteRouter:
    return WriteRouter(WriteTarget(root, shards, DIM, "mv1"), _embed, _fetch)


def test_upserts_are_routed_logged_and_acknowledged(tmp_path: object) -> None:
    router = _router(str(tmp_path))
    items = [UpsertItem(f"s3://b/img-{i}.jpg", image=bytes([i + 1]) * 4) for i in range(12)]
    items.append(UpsertItem("s3://b/v.jpg", vector=np.full(DIM, 3e38, np.float32)))
    items.append(UpsertItem("s3://b/fetched.jpg", attributes={"label": "cat"}))
    items.append(UpsertItem("s3://b/broken.jpg", image=b"broken"))
    items.append(UpsertItem("/local/path.jpg", image=b"x"))
    items.append(UpsertItem("s3://b/short.jpg", vector=np.ones(3, np.float32)))
    results = asyncio.run(router.upsert(items))
    assert [r.status for r in results[:14]] == [OK] * 14
    assert results[14].status == ERROR and "not_an_image" in results[14].reason
    assert results[15].status == ERROR and "s3://" in results[15].reason
    assert results[16].status == ERROR and "dim" in results[16].reason
    logged: dict[int, Upsert] = {}
    for shard in range(3):
        for entry in ShardLog(str(tmp_path), shard).read_after(0):
            for op in entry.operations:
                assert isinstance(op, Upsert) and ids.shard_of(op.image_id, 3) == shard
                logged[op.image_id] = op
    for item, result in zip(items[:14], results[:14], strict=True):
        assert result.image_id == ids.image_id(item.key) and result.seq >= 1
        assert logged[result.image_id].key == item.key
        assert abs(float(np.linalg.norm(logged[result.image_id].vector)) - 1) < 1e-5
    assert logged[ids.image_id("s3://b/fetched.jpg")].attributes == {"label": "cat"}


def test_deletes_by_key_and_id(tmp_path: object) -> None:
    router = _router(str(tmp_path), shards=2)
    victim = ids.image_id("s3://b/x.jpg")
    results = asyncio.run(router.delete(["s3://b/x.jpg", "nope"], [12345, -1]))
    assert [r.status for r in results] == [OK, ERROR, OK, ERROR]
    deleted = {op.image_id for s in range(2) for e in ShardLog(str(tmp_path), s).read_after(0)
               for op in e.operations if isinstance(op, Delete)}
    assert deleted == {victim, 12345}


def test_unit_vector_is_safe_for_extreme_values() -> None:
    huge = unit_vector(np.full(DIM, 3e38, np.float32), DIM)
    assert np.isfinite(huge).all() and abs(float(np.linalg.norm(huge)) - 1) < 1e-6
    for bad in (np.zeros(DIM), np.full(DIM, np.nan), np.full(DIM, np.inf)):
        with pytest.raises(ValueError):
            unit_vector(bad, DIM)
