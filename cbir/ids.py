"""Stable image ids and shard assignment (docs/architecture.md, "Data contracts")."""

from __future__ import annotations

import numpy as np
import xxhash

ID_MASK = (1 << 63) - 1
NO_RESULT = -1


def image_id(uri: str) -> int:
    """63-bit xxh64 of the object's full URI (``s3://bucket/key``): stable across processes."""
    return xxhash.xxh64_intdigest(uri.encode("utf-8")) & ID_MASK


def shard_of(image_id_: int, num_shards: int) -> int:
    if num_shards <= 0:
        raise ValueError(f"num_shards must be positive, got {num_shards}")
    return image_id_ % num_shards


def shards_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """Vectorised ``shard_of`` for an int64 array."""
    if num_shards <= 0:
        raise ValueError(f"num_shards must be positive, got {num_shards}")
    return (ids.astype(np.int64) % num_shards).astype(np.int32)
